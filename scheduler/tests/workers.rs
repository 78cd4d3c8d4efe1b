//! Remote workers (`keel worker` processes) running the workflows of a cluster whose nodes
//! run none themselves.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, poll};
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};

/// A `keel worker` process, killed when dropped.
struct WorkerProc(Child);

impl WorkerProc {
    fn start(cluster: &Cluster, id: u64) -> Self {
        let log = std::fs::File::create(cluster.dir.path().join(format!("worker-{id}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "worker",
                "--id",
                &id.to_string(),
                "--cluster",
                &cluster.addrs().join(","),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel worker");
        Self(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn get(client: &WorkflowClient, id: &str) -> Option<WorkflowInfo> {
    client.clone().get(id, true).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_has_its_workflow_leased_to_another() {
    let cluster = Cluster::start(3, "runtime_threads = 1\n[scheduler]\nrun_workflows = false");
    cluster.init().await;
    let mut first = WorkerProc::start(&cluster, 1);
    let mut client = WorkflowClient::new(&cluster.addrs()).expect("client");
    // The kinds are known once a worker declared them.
    poll("the worker declared its kinds", || {
        let mut client = client.clone();
        async move {
            client
                .start("slow", "slow-step", Bytes::from("1500"))
                .await
                .is_ok()
        }
    })
    .await;
    poll(
        "the quick step is journaled (the slow one is running)",
        || {
            let client = client.clone();
            async move {
                get(&client, "slow").await.is_some_and(|info| {
                    info.journal.first().is_some_and(|e| e.state == "done")
                        && info.journal.len() == 1
                })
            }
        },
    )
    .await;
    let fence_before = get(&client, "slow").await.expect("workflow").fence;
    first.kill();
    let second = WorkerProc::start(&cluster, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = client
            .get_after("slow", Duration::from_secs(5), true)
            .await
            .expect("get");
        if info.status != "running" {
            break info;
        }
        assert!(Instant::now() < deadline, "never finished: {info:?}");
    };
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(
        info.result,
        format!("slow done by process {}, attempt 1", second.0.id()).as_bytes()
    );
    assert!(info.fence > fence_before, "re-leased under a new fence");
    let names: Vec<&str> = info.journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["quick", "slow"], "each step recorded once");
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_lease_and_its_late_records_are_refused() {
    let cluster = Cluster::start(3, "runtime_threads = 1\n[scheduler]\nrun_workflows = false");
    cluster.init().await;
    let paused = WorkerProc::start(&cluster, 1);
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    poll("the worker declared its kinds", || {
        let mut client = client.clone();
        async move {
            client
                .start("zombie", "slow-step", Bytes::from("2000"))
                .await
                .is_ok()
        }
    })
    .await;
    poll("the slow step is running on worker 1", || {
        let client = client.clone();
        async move {
            get(&client, "zombie")
                .await
                .is_some_and(|info| info.journal.len() == 1)
        }
    })
    .await;
    let fence_before = get(&client, "zombie").await.expect("workflow").fence;
    signal(&paused.0, "-STOP");
    let other = WorkerProc::start(&cluster, 2);
    // Worker 1's lease expires (3 s without heartbeats) and worker 2 is leased the workflow.
    poll("the workflow is leased again", || {
        let client = client.clone();
        async move {
            get(&client, "zombie")
                .await
                .is_some_and(|info| info.fence > fence_before)
        }
    })
    .await;
    // Worker 1 wakes with its step's work done and records it under its old fence, before
    // worker 2 (which works 2 s) can: the record must be refused.
    signal(&paused.0, "-CONT");
    poll("the workflow finished", || {
        let client = client.clone();
        async move {
            get(&client, "zombie")
                .await
                .is_some_and(|info| info.status == "completed")
        }
    })
    .await;
    let info = get(&client, "zombie").await.expect("workflow");
    let names: Vec<&str> = info.journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["quick", "slow"]);
    assert_eq!(
        info.journal[1].value,
        format!("slow done by process {}, attempt 1", other.0.id()).as_bytes(),
        "the step is recorded by the worker holding the lease, not the paused one"
    );
}
