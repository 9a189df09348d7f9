"""The search service: ``autoprune submit / jobs / logs / stop / fetch`` on Ray Jobs, shared storage.

Fast tests use a stand-in for Ray's job client (no cluster); the slow ones start a real local Ray head
(``ray start --head --block``, stopped by its pid) and run tiny searches on it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import tiny_config, write_config

from autoprune.atomic import read_trials
from autoprune.cli import main
from autoprune.config import load_config
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pipeline import jobdriver, jobpackage, jobs
from autoprune.pipeline.storage import Storage, Syncer, ordered_files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------- a stand-in job client


def _job(job: str, status: str, run: str, storage: str, kind: str = "search") -> SimpleNamespace:
    meta = {"autoprune": "1", "run": run, "kind": kind, "storage": storage, "planned": "3", "cpus": "1"}
    return SimpleNamespace(submission_id=job, status=status, metadata=meta, start_time=1_700_000_000_000,
                           message="")


class FakeClient:
    def __init__(self, *details: SimpleNamespace) -> None:
        self.jobs = {d.submission_id: d for d in details}
        self.submitted: list[dict] = []

    def get_job_info(self, job):
        if job not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job} does not exist.")
        return self.jobs[job]

    def list_jobs(self):
        return list(self.jobs.values())

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def stop_job(self, job):
        self.jobs[job].status = "STOPPED"
        return True


@pytest.fixture
def fake_cluster(monkeypatch):
    def install(*details):
        client = FakeClient(*details)
        monkeypatch.setattr(jobs, "connect", lambda address=None: jobs.Cluster(client, "http://head:8265"))
        return client
    return install


def _finished_run(root: Path, run: str) -> Path:
    run_dir = root / "runs" / run
    (run_dir / "report").mkdir(parents=True)
    for name in ("best_plan.json", "summary.json", "config.yaml"):
        (run_dir / name).write_text("{}")
    (run_dir / "report" / "report.md").write_text("# report")
    pd.DataFrame({"val_accuracy": [0.5, 0.7]}).to_parquet(run_dir / "trials.parquet")
    return run_dir


# ------------------------------------------------------------------------------------ bad input


def test_unreachable_address_is_one_line(capsys):
    port = _free_port()
    for argv in (["jobs"], ["logs", "x"], ["stop", "x"], ["fetch", "x"]):
        assert main([*argv, "--address", f"http://127.0.0.1:{port}"]) == 2
        assert f"no Ray cluster answers at http://127.0.0.1:{port}" in _one_line_error(capsys)


def test_a_server_that_takes_the_connection_and_never_answers_is_a_one_line_error(monkeypatch, capsys):
    """Ray's job client sets no timeout: a port that accepts and stays silent hung `autoprune jobs` for good."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(server.accept()) for _ in range(4)], daemon=True).start()
    from ray.job_submission import JobSubmissionClient

    # the timeout rides on the client's private request method: if Ray renames it, fail here, not hang below
    assert "_do_request" in vars(jobs._timed_client_class()) and callable(JobSubmissionClient._do_request)
    monkeypatch.setattr(jobs, "HTTP_TIMEOUT_S", (2.0, 0.5))
    address = f"http://127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    try:
        assert main(["jobs", "--address", address]) == 2
    finally:
        server.close()
    assert time.monotonic() - started < 30 and accepted
    assert f"no Ray job server at {address}" in _one_line_error(capsys)


def test_submit_checks_files_before_the_cluster(tmp_path, capsys):
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens: the files are checked first
    for section, key in (({"model": {"name": "mnist_cnn", "checkpoint": "missing.pt"}}, "model.checkpoint"),
                         ({"budget": {"latency": 0.5, "lut": "nope/lut.json"}}, "budget.lut")):
        config = write_config(tmp_path, tiny_config(**section))
        assert main(["submit", config, "--address", address, "--storage", str(tmp_path / "s")]) == 2
        assert f"{key} " in _one_line_error(capsys)
    assert main(["submit", str(tmp_path / "absent.yaml"), "--address", address]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_remote_cluster_needs_shared_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(jobs.STORAGE_ENV, raising=False)
    config = write_config(tmp_path, tiny_config())
    assert main(["submit", config, "--address", "http://192.0.2.1:8265"]) == 2
    assert "give --storage" in _one_line_error(capsys)
    with pytest.raises(AutopruneError, match="absolute path or a URI"):
        Storage("relative/dir")
    with pytest.raises(AutopruneError, match="not usable"):
        Storage("nosuchscheme://bucket/x")


def test_unknown_job_is_one_line(fake_cluster, capsys, tmp_path):
    fake_cluster(_job("other", "RUNNING", "other", str(tmp_path)))
    for argv in (["logs", "nope"], ["stop", "nope"], ["fetch", "nope"], ["submit", "--resume", "nope"]):
        assert main(argv) == 2
        assert "there is no job 'nope'" in _one_line_error(capsys)


def test_fetch_refuses_an_unfinished_job(fake_cluster, capsys, tmp_path):
    run_dir = _finished_run(tmp_path / "store", "r1")
    (run_dir / "summary.json").unlink()
    fake_cluster(_job("r1", "RUNNING", "r1", str(tmp_path / "store")),
                 _job("r2", "STOPPED", "r1x", str(tmp_path / "store")))
    out = tmp_path / "out"
    assert main(["fetch", "r1", "--out", str(out)]) == 2
    assert "is RUNNING" in _one_line_error(capsys)
    assert main(["fetch", "r2", "--out", str(out)]) == 2
    assert "autoprune submit --resume r2" in _one_line_error(capsys)
    assert not out.exists()


def test_fetch_is_all_or_nothing(fake_cluster, monkeypatch, capsys, tmp_path):
    _finished_run(tmp_path / "store", "r1")
    fake_cluster(_job("r1", "SUCCEEDED", "r1", str(tmp_path / "store")))
    out = tmp_path / "out"
    calls = []
    real = shutil.copyfileobj

    def failing_copy(src, dst, length=0):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", failing_copy)
    assert main(["fetch", "r1", "--out", str(out)]) == 2
    assert "nothing was written" in _one_line_error(capsys)
    assert list(out.iterdir()) == []  # no half-copied run dir, no temporary left behind
    monkeypatch.setattr(shutil, "copyfileobj", real)
    assert main(["fetch", "r1", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "r1").iterdir()) == ["best_plan.json", "config.yaml", "report",
                                                              "summary.json", "trials.parquet"]
    assert main(["fetch", "r1", "--out", str(out)]) == 2  # never over an existing copy
    assert "already exists" in _one_line_error(capsys)


def test_jobs_lists_progress_and_resubmit_rules(fake_cluster, capsys, tmp_path):
    store = tmp_path / "store"
    _finished_run(store, "done")
    half = _finished_run(store, "half")
    (half / "summary.json").unlink()
    failed = _job("bad", "FAILED", "bad", str(store))
    failed.message = "Job entrypoint command failed with exit code 2, last logs:\nautoprune: error: no such model\n"
    client = fake_cluster(_job("done", "SUCCEEDED", "done", str(store)), _job("half", "STOPPED", "half", str(store)),
                          _job("busy", "RUNNING", "busy", str(store)), failed)
    assert main(["jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "bad: autoprune: error: no such model"
    assert lines[0].split() == ["JOB", "STATUS", "KIND", "EVALS", "BEST", "SUBMITTED"]
    assert lines[1].split()[:5] == ["done", "SUCCEEDED", "search", "2/3", "0.7000"]
    assert lines[3].split()[:4] == ["busy", "RUNNING", "search", "0/3"]
    assert main(["submit", "--resume", "done"]) == 2
    assert "has finished" in _one_line_error(capsys)
    assert main(["submit", "--resume", "busy"]) == 2
    assert "autoprune stop busy" in _one_line_error(capsys)
    assert main(["submit", "--resume", "half"]) == 0
    (sub,) = client.submitted
    assert sub["submission_id"] == "half--2" and "--run half" in sub["entrypoint"] and "--package" not in sub["entrypoint"]
    assert sub["metadata"]["resumes"] == "half" and sub["entrypoint_num_cpus"] == 1.0
    assert main(["stop", "busy"]) == 0 and client.jobs["busy"].status == "STOPPED"


# ----------------------------------------------------------------------------- packaging, storage


def test_package_ships_checkpoint_lut_and_factory_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ckpt.pt").write_bytes(b"weights")
    Path("luts").mkdir()
    Path("luts/cpu.json").write_text("{}")
    Path("mymodels.py").write_text("def build(**kw):\n    pass\n")
    cfg = load_config(tiny_config(model={"factory": "mymodels:build", "checkpoint": "ckpt.pt"},
                                  budget={"latency": 0.5, "lut": "luts/cpu.json"}))
    pkg = jobpackage.package(cfg, tmp_path / "pkg")
    shipped = load_config(pkg / "config.yaml")
    assert shipped.model.checkpoint == "inputs/ckpt.pt" and shipped.budget.lut == "inputs/cpu.json"
    assert (pkg / "inputs" / "ckpt.pt").read_bytes() == b"weights" and (pkg / "mymodels.py").is_file()
    assert jobpackage.planned_evaluations(cfg, "search") == 3
    assert jobpackage.job_kind(load_config(tiny_config(seeds=[0, 1])), None) == "run"


def test_package_ships_a_local_lut_registry(tmp_path, monkeypatch):
    """A config's ``luts:`` folder travels with the job (the device's tables are not on the cluster)."""
    monkeypatch.chdir(tmp_path)
    Path("mine/pixel7-ort").mkdir(parents=True)
    Path("mine/pixel7-ort/resnet20.json").write_text("{}")
    cfg = load_config(tiny_config(luts="mine", budget={"latency": 0.5, "device": "pixel7-ort"}))
    pkg = jobpackage.package(cfg, tmp_path / "pkg")
    shipped = load_config(pkg / "config.yaml")
    assert shipped.luts == "inputs/luts" and shipped.budget.device == "pixel7-ort"
    assert (pkg / "inputs" / "luts" / "pixel7-ort" / "resnet20.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="luts 'missing' is not a directory"):
        jobpackage.package(load_config(tiny_config(luts="missing")), tmp_path / "pkg2")


def test_experiment_budgets_inherit_where_latency_comes_from():
    """``budgets:`` entries keep the ``budget:`` section's lut, runtime and device unless they set their own."""
    from autoprune.pipeline.experiments import combinations

    cfg = load_config(tiny_config(budget={"latency": 0.5, "lut": "a.json", "runtime": "onnxruntime"},
                                  budgets=["latency=0.4", {"latency": 0.3, "runtime": "torch", "lut": "b.json"}]))
    budgets = [c["config"]["budget"] for c in combinations(cfg)]
    assert (budgets[0]["runtime"], budgets[0]["lut"], budgets[0]["latency"]) == ("onnxruntime", "a.json", 0.4)
    assert (budgets[1]["runtime"], budgets[1]["lut"], budgets[1]["latency"]) == ("torch", "b.json", 0.3)


def test_syncer_uploads_changes_in_a_resumable_order(tmp_path):
    store = Storage("mock:///sync-test")
    src = tmp_path / "run"
    (src / "ddpg").mkdir(parents=True)
    for name in ("summary.json", "trials.parquet", "best_plan.json", "ddpg/checkpoint.pkl", ".x.123.tmp"):
        (src / name).write_text(name)
    assert [p.name for p in ordered_files(src)][-2:] == ["trials.parquet", "summary.json"]
    syncer = Syncer(store, src, ("runs", "r"), period=3600).start()
    (src / "best_plan.json").unlink()
    syncer.stop()
    assert sorted(store.files("runs", "r")) == ["ddpg/checkpoint.pkl", "summary.json", "trials.parquet"]
    assert syncer.sync() == 0  # nothing changed since


def test_job_driver_on_a_uri_storage_stages_and_resumes(tmp_path, monkeypatch):
    """A job on a URI storage (here pyarrow's in-memory mock://): run dir staged, synced, and resumed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(jobdriver, "workdir", lambda run: tmp_path / "node" / run)
    pkg = jobpackage.package(load_config(tiny_config()), tmp_path / "pkg")
    store = Storage("mock:///uri-store")
    jobdriver.run_job(store.root, "r1", "search", package=pkg)
    files = store.files("runs", "r1")
    assert {"summary.json", "trials.parquet", "pruned_model.pt", "report/report.md"} <= set(files)
    assert store.is_file("jobs", "r1", "package", "config.yaml")
    assert jobs.progress(store, "r1", "search")[0] == 3
    assert not (tmp_path / "node" / "r1").exists()  # the job cleans up its node: only the storage is left
    jobdriver.run_job(store.root, "r1", "search")  # a finished run: nothing to do
    assert store.files("runs", "r1") == files


# ------------------------------------------------------------------------------- a real cluster


def _needs_ray_jobs() -> None:
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (aiohttp & co: what serves Ray Jobs)
    except ImportError:
        pytest.skip("ray[default] is not installed: `ray start --head` would serve no Ray Jobs API "
                    "(pip install 'autoprune[service]')")


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with the dashboard (Ray Jobs), 2 CPUs, its own temp dir and ports."""
    _needs_ray_jobs()
    temp = Path(tempfile.mkdtemp(prefix="aprt-", dir="/tmp"))  # short: Ray's socket paths have a limit
    dashboard = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(_free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--num-cpus", "2", "--temp-dir", str(temp / "ray")]
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(lambda: jobs.connect(address), 120, head, temp / "head.log")
        yield SimpleNamespace(address=address, storage=temp / "storage")
    finally:
        _stop_head(head, temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for(probe, timeout: float, head: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            probe()
            return
        except AutopruneError:
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def _stop_head(head: subprocess.Popen, temp: Path) -> None:
    """SIGTERM to our `ray start --block` (it stops what it started), then any process of this cluster
    still alive (found by its unique temp dir in the command line) by its pid: never another Ray."""
    import psutil

    head.send_signal(signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        head.kill()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(temp) in " ".join(proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.Error:
                pass


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _submitted(out: str) -> str:
    return re.search(r"submitted job (\S+)", out).group(1)


@pytest.mark.slow
def test_cluster_submit_follow_fetch_and_track(ray_head, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow", reason="the service extra installs mlflow: pip install 'autoprune[service]'")
    from mlflow.tracking import MlflowClient

    from autoprune.pipeline.artifacts import load_pruned

    monkeypatch.chdir(tmp_path)
    a, storage = ray_head.address, ray_head.storage
    config = write_config(tmp_path, tiny_config(tracking={"mlflow": True}))
    job = _submitted(_run(capsys, "submit", config, "--address", a, "--storage", str(storage)))
    assert "finished run" in _run(capsys, "logs", job, "--follow", "--address", a)
    line = next(ln for ln in _run(capsys, "jobs", "--address", a).splitlines() if ln.startswith(job + " "))
    assert line.split()[1:4] == ["SUCCEEDED", "search", "3/3"]
    assert "fetched" in _run(capsys, "fetch", job, "--out", "got", "--address", a)
    run_dir = tmp_path / "got" / job
    for name in ("best_plan.json", "pruned_model.pt", "summary.json", "trials.parquet", "report/report.md"):
        assert (run_dir / name).is_file(), name
    model = load_pruned(run_dir / "pruned_model.pt")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    client = MlflowClient(f"sqlite:///{storage / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(runs) == 1 + 3
    assert "model" in {x.path for x in client.list_artifacts(parents[0].info.run_id)}


@pytest.mark.slow
def test_cluster_stopped_job_resumes_without_losing_evaluations(ray_head, tmp_path, capsys):
    a, storage = ray_head.address, ray_head.storage
    # evaluated on 2 Ray actors (the quickstart's setting): the resubmitted job must give them the package
    config = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 300},
                                                ray={"workers": 2}))
    job = _submitted(_run(capsys, "submit", config, "--address", a, "--storage", str(storage)))
    trials = storage / "runs" / job / "trials.parquet"
    deadline = time.time() + 300
    while len(read_trials(trials)) < 5:  # one read per look: the job renames new tables over it
        assert time.time() < deadline, "the job recorded no trial in time"
        time.sleep(0.2)
    assert "stopping job" in _run(capsys, "stop", job, "--address", a)
    cluster = jobs.connect(a)
    deadline = time.time() + 120
    while (status := str(jobs.job_details(cluster, job).status.value)) in jobs.ACTIVE:
        assert time.time() < deadline, f"the stopped job is still {status} after 120 s"
        time.sleep(0.5)
    before = pd.read_parquet(trials)
    assert status == "STOPPED" and 5 <= len(before) < 300, (status, len(before))
    assert main(["fetch", job, "--address", a]) == 2  # not finished
    assert "submit --resume" in _one_line_error(capsys)

    again = _submitted(_run(capsys, "submit", "--resume", job, "--address", a))
    assert again == f"{job}--2"
    assert "resuming search" in _run(capsys, "logs", again, "--follow", "--address", a)
    after = pd.read_parquet(trials)
    assert len(after) == 300 and after["index"].tolist() == list(range(300))
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)  # same rows, same times: none redone
    assert main(["submit", "--resume", again, "--address", a]) == 2
    assert "has finished" in _one_line_error(capsys)


@pytest.mark.slow
def test_cluster_unknown_job(ray_head, capsys):
    for argv in (["logs", "no-such-job"], ["fetch", "no-such-job"], ["stop", "no-such-job"]):
        assert main([*argv, "--address", ray_head.address]) == 2
        assert "there is no job 'no-such-job'" in _one_line_error(capsys)


def test_a_job_finds_the_shared_storage_luts(tmp_path, monkeypatch):
    """LUTs under STORAGE/luts/ (built once per device) serve every job's latency budgets: the driver
    points the LUT registry there unless the environment already names a directory."""
    import autoprune.pipeline.run as run_module
    from autoprune.latency.lutdir import ENV_VAR

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    seen = {}
    monkeypatch.setattr(run_module, "run_search", lambda cfg, out, resume, progress: seen.update(
        lut_dir=os.environ.get(ENV_VAR)) or out)
    root = tmp_path / "storage"
    (root / "luts" / "pixel7-ort").mkdir(parents=True)
    pkg = jobpackage.package(load_config(tiny_config()), tmp_path / "pkg")
    try:
        jobdriver.run_job(str(root), "r1", "search", package=pkg)
    except Exception:
        pass  # the stubbed search writes no run dir; only where the registry looks matters here
    assert seen["lut_dir"] == str(root / "luts")
