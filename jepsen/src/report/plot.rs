//! The report's plots: `latency.png` (every client operation's latency over time, by
//! outcome), `rate.png` (completions per second, by outcome) and, when timers ran,
//! `lateness.png` (each timer's first delivery after its earliest allowed moment), with
//! each fault's active period shaded and named.
//!
//! Text needs a TrueType font, read at run time (Debian: `fonts-dejavu-core`), so no
//! system font library is linked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::history::{Call, NEMESIS, Op, OpType, WATCHERS};

/// Where distributions put `DejaVu Sans`.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const SIZE: (u32, u32) = (1200, 480);
const OUTCOMES: [(OpType, RGBColor); 3] = [
    (OpType::Ok, RGBColor(40, 140, 60)),
    (OpType::Info, RGBColor(230, 140, 20)),
    (OpType::Fail, RGBColor(200, 40, 40)),
];
const FAULT_SHADE: RGBColor = RGBColor(120, 120, 160);

/// One completed client operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// When it completed, in seconds since the run began.
    pub at_s: f64,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
    /// Its outcome.
    pub outcome: OpType,
}

/// A fault's active period.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultWindow {
    /// The fault's family name.
    pub name: String,
    /// When it began, in seconds.
    pub from_s: f64,
    /// When it was healed, in seconds.
    pub to_s: f64,
}

/// What the plots show, taken from a history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Every client completion.
    pub completions: Vec<Completion>,
    /// Every fault.
    pub faults: Vec<FaultWindow>,
    /// Each acknowledged timer's first delivery: `(when, ms after its schedule's invocation
    /// plus its delay)`.
    pub lateness: Vec<(f64, f64)>,
    /// The history's last moment, in seconds.
    pub end_s: f64,
}

#[expect(
    clippy::cast_precision_loss,
    reason = "nanoseconds of a test run fit a float's mantissa"
)]
fn seconds(time_ns: u64) -> f64 {
    time_ns as f64 / 1e9
}

impl Timeline {
    /// Pairs each client's invocations with their completions (a client has one operation
    /// open at a time) and each fault's invocation with its heal.
    pub fn of(ops: &[Op]) -> Self {
        let mut open: BTreeMap<u64, u64> = BTreeMap::new();
        let mut open_faults: Vec<(String, u64)> = Vec::new();
        let mut timeline = Self::default();
        for op in ops {
            timeline.end_s = timeline.end_s.max(seconds(op.time_ns));
            if op.process == NEMESIS {
                let Call::Fault { fault, .. } = &op.call else {
                    continue;
                };
                match op.kind {
                    OpType::Invoke => open_faults.push((fault.clone(), op.time_ns)),
                    _ => {
                        if let Some(at) = open_faults.iter().position(|(name, _)| name == fault) {
                            let (name, from) = open_faults.remove(at);
                            timeline.faults.push(FaultWindow {
                                name,
                                from_s: seconds(from),
                                to_s: seconds(op.time_ns),
                            });
                        }
                    }
                }
                continue;
            }
            if op.process >= WATCHERS {
                continue;
            }
            match op.kind {
                OpType::Invoke => {
                    open.insert(op.process, op.time_ns);
                }
                outcome => {
                    if let Some(invoked) = open.remove(&op.process) {
                        timeline.completions.push(Completion {
                            at_s: seconds(op.time_ns),
                            latency_ms: seconds(op.time_ns.saturating_sub(invoked)) * 1e3,
                            outcome,
                        });
                    }
                }
            }
        }
        for (name, from) in open_faults {
            timeline.faults.push(FaultWindow {
                name,
                from_s: seconds(from),
                to_s: timeline.end_s,
            });
        }
        timeline.lateness = lateness(ops);
        timeline
    }

    /// Completions per whole second, by outcome: `(second, outcome) → count`.
    pub fn rates(&self) -> BTreeMap<(u64, OpType), u64> {
        let mut rates = BTreeMap::new();
        for completion in &self.completions {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a non-negative number of seconds, floored"
            )]
            let second = completion.at_s.floor() as u64;
            *rates.entry((second, completion.outcome)).or_insert(0) += 1;
        }
        rates
    }
}

/// Each acknowledged timer's first delivery and how late it came after the earliest moment
/// it was allowed: its schedule's invocation plus its delay, on the harness's clock.
fn lateness(ops: &[Op]) -> Vec<(f64, f64)> {
    let mut invoked: BTreeMap<(u64, &str), u64> = BTreeMap::new();
    let mut earliest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut delivered: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops {
        match (&op.call, op.kind) {
            (Call::Schedule { name, .. }, OpType::Invoke) => {
                invoked.insert((op.process, name.as_str()), op.time_ns);
            }
            (Call::Schedule { name, delay_ms, .. }, OpType::Ok) => {
                if let Some(at) = invoked.get(&(op.process, name.as_str())) {
                    earliest.insert(name, at + delay_ms * 1_000_000);
                }
            }
            (Call::Fire { name, .. }, _) => {
                delivered.entry(name).or_insert(op.time_ns);
            }
            _ => {}
        }
    }
    delivered
        .into_iter()
        .filter_map(|(name, at)| {
            let due = earliest.get(name)?;
            Some((seconds(at), seconds(at.saturating_sub(*due)) * 1e3))
        })
        .collect()
}

/// Registers the font once; `None` if no font file is installed.
fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        FONTS.iter().map(PathBuf::from).find_map(|path| {
            let bytes: &'static [u8] = Box::leak(std::fs::read(&path).ok()?.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
            Some(path)
        })
    })
    .as_deref()
}

/// Draws `latency.png` and `rate.png` into `dir`.
///
/// # Errors
/// No font installed, or a drawing error.
pub fn draw(dir: &Path, timeline: &Timeline) -> anyhow::Result<()> {
    anyhow::ensure!(
        font().is_some(),
        "no TrueType font to label the plots (Debian: apt-get install fonts-dejavu-core)"
    );
    draw_latency(&dir.join("latency.png"), timeline)?;
    draw_rate(&dir.join("rate.png"), timeline)?;
    if !timeline.lateness.is_empty() {
        draw_lateness(&dir.join("lateness.png"), timeline)?;
    }
    Ok(())
}

fn shade_faults<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>,
    >,
    faults: &[FaultWindow],
    (low, high): (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for fault in faults {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(fault.from_s, low), (fault.to_s, high)],
                FAULT_SHADE.mix(0.18).filled(),
            )))
            .map_err(drawing)?;
        chart
            .draw_series(std::iter::once(Text::new(
                fault.name.clone(),
                (fault.from_s, high),
                ("sans-serif", 13).into_font().color(&FAULT_SHADE),
            )))
            .map_err(drawing)?;
    }
    Ok(())
}

/// Draws the legend and writes the file.
fn finish<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

/// A drawing error, as the harness reports errors.
fn drawing(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {error}")
}

/// One labelled set of points of a scatter plot.
struct Series<'a> {
    label: String,
    color: RGBColor,
    points: Box<dyn Iterator<Item = (f64, f64)> + 'a>,
}

/// A scatter plot of milliseconds (log scale) over the run's time, faults shaded.
fn draw_scatter(
    path: &Path,
    timeline: &Timeline,
    (caption, y_desc): (&str, &str),
    sets: Vec<Series<'_>>,
    max_ms: f64,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let max_ms = max_ms.max(10.0) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..timeline.end_s.max(1.0), (0.1f64..max_ms).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .draw()
        .map_err(drawing)?;
    shade_faults(&mut chart, &timeline.faults, (0.1, max_ms))?;
    for set in sets {
        let color = set.color;
        chart
            .draw_series(
                set.points
                    .map(|(at, ms)| Circle::new((at, ms.max(0.1)), 2, color.filled())),
            )
            .map_err(drawing)?
            .label(set.label)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    finish(&mut chart, &root)
}

fn draw_latency(path: &Path, timeline: &Timeline) -> anyhow::Result<()> {
    let max_ms = timeline
        .completions
        .iter()
        .map(|c| c.latency_ms)
        .fold(0.0, f64::max);
    let sets = OUTCOMES
        .iter()
        .map(|&(outcome, color)| Series {
            label: format!("{outcome:?}").to_lowercase(),
            color,
            points: Box::new(
                timeline
                    .completions
                    .iter()
                    .filter(move |c| c.outcome == outcome)
                    .map(|c| (c.at_s, c.latency_ms)),
            ),
        })
        .collect();
    draw_scatter(
        path,
        timeline,
        ("operation latency", "latency (ms)"),
        sets,
        max_ms,
    )
}

fn draw_lateness(path: &Path, timeline: &Timeline) -> anyhow::Result<()> {
    let max_ms = timeline
        .lateness
        .iter()
        .map(|&(_, ms)| ms)
        .fold(0.0, f64::max);
    let timers = Series {
        label: "timer".to_owned(),
        color: OUTCOMES[0].1,
        points: Box::new(timeline.lateness.iter().copied()),
    };
    draw_scatter(
        path,
        timeline,
        (
            "timer lateness (first delivery after invoke + delay)",
            "lateness (ms)",
        ),
        vec![timers],
        max_ms,
    )
}

fn draw_rate(path: &Path, timeline: &Timeline) -> anyhow::Result<()> {
    let rates = timeline.rates();
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts per second fit a float's mantissa"
    )]
    let max_rate = rates.values().copied().max().unwrap_or(1) as f64 * 1.2;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("completions per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..timeline.end_s.max(1.0), 0f64..max_rate)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("operations / s")
        .draw()
        .map_err(drawing)?;
    shade_faults(&mut chart, &timeline.faults, (0.0, max_rate))?;
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "seconds and counts of a test run"
    )]
    for (outcome, color) in OUTCOMES {
        let last = timeline.end_s.ceil() as u64;
        let series = (0..=last).map(|second| {
            let count = rates.get(&(second, outcome)).copied().unwrap_or(0);
            (second as f64 + 0.5, count as f64)
        });
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))
            .map_err(drawing)?
            .label(format!("{outcome:?}").to_lowercase())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    finish(&mut chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, time_ms: u64, process: u64, kind: OpType, call: Call) -> Op {
        Op {
            index,
            time_ns: time_ms * 1_000_000,
            process,
            kind,
            call,
            error: None,
        }
    }

    fn append() -> Call {
        Call::Append {
            value: "v".into(),
            offset: None,
        }
    }

    fn fault(name: &str) -> Call {
        Call::Fault {
            fault: name.into(),
            detail: String::new(),
            clock_offset_ms: None,
        }
    }

    fn history() -> Vec<Op> {
        vec![
            op(0, 0, 1, OpType::Invoke, append()),
            op(1, 100, NEMESIS, OpType::Invoke, fault("kill")),
            op(2, 250, 1, OpType::Ok, append()),
            op(3, 300, 2, OpType::Invoke, append()),
            op(4, 1_300, 2, OpType::Info, append()),
            op(5, 1_400, WATCHERS + 1, OpType::Ok, append()),
            op(6, 2_000, NEMESIS, OpType::Ok, fault("kill")),
            op(7, 2_100, NEMESIS, OpType::Invoke, fault("pause")),
            op(8, 2_500, NEMESIS, OpType::Ok, fault("heal")),
        ]
    }

    #[test]
    fn pairs_completions_with_their_invocations_and_faults_with_their_heals() {
        let timeline = Timeline::of(&history());
        assert_eq!(
            timeline.completions,
            vec![
                Completion {
                    at_s: 0.25,
                    latency_ms: 250.0,
                    outcome: OpType::Ok
                },
                Completion {
                    at_s: 1.3,
                    latency_ms: 1_000.0,
                    outcome: OpType::Info
                },
            ]
        );
        assert_eq!(
            timeline.faults,
            vec![
                FaultWindow {
                    name: "kill".into(),
                    from_s: 0.1,
                    to_s: 2.0
                },
                FaultWindow {
                    name: "pause".into(),
                    from_s: 2.1,
                    to_s: 2.5
                },
            ]
        );
        assert_eq!(
            timeline.rates(),
            BTreeMap::from([((0, OpType::Ok), 1), ((1, OpType::Info), 1)])
        );
    }

    #[test]
    fn lateness_counts_from_the_schedules_invocation_plus_its_delay() {
        let schedule = |due_ms| Call::Schedule {
            at_ms: None,
            name: "t".into(),
            delay_ms: 100,
            due_ms,
        };
        let fire = Call::Fire {
            node: 1,
            name: "t".into(),
            term: 1,
            index: 9,
        };
        let ops = vec![
            op(0, 1_000, 1, OpType::Invoke, schedule(None)),
            op(1, 1_010, 1, OpType::Ok, schedule(Some(5))),
            op(2, 1_150, WATCHERS + 1, OpType::Ok, fire.clone()),
            op(3, 1_400, WATCHERS + 2, OpType::Ok, fire),
        ];
        assert_eq!(Timeline::of(&ops).lateness, vec![(1.15, 50.0)]);
    }

    #[test]
    fn draws_both_plots_as_png() {
        if font().is_none() {
            // The report says why; CI installs the font (.ci/run).
            assert!(draw(Path::new("."), &Timeline::default()).is_err());
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        draw(dir.path(), &Timeline::of(&history())).expect("draw");
        for name in ["latency.png", "rate.png"] {
            let bytes = std::fs::read(dir.path().join(name)).expect("plot written");
            assert_eq!(&bytes[1..4], b"PNG", "{name} is a PNG");
        }
    }
}
