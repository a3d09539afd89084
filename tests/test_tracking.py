"""Experiment trackers (report_to=): every stage's metrics.jsonl rows and config, read back from each tracker offline."""

import glob
import json
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import repeat_demos, toy_corpus, write_jsonl, yes_rankings
from instructgpt import config
from instructgpt.config import ConfigError
from instructgpt.records import read_metrics
from instructgpt.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("track_data")
    write_jsonl(d / "sft.jsonl", repeat_demos(32, 1))
    write_jsonl(d / "valid.jsonl", repeat_demos(8, 2))
    write_jsonl(d / "rm.jsonl", yes_rankings(16, 1))
    write_jsonl(d / "prompts.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(8)])
    (d / "corpus.txt").write_text("\n\n".join(toy_corpus(80)))
    return d


def run_sft(model, d, out, **kw):
    cfg = dict(model=str(model), train=str(d / "sft.jsonl"), valid=str(d / "valid.jsonl"), out_dir=str(out),
               lr=1e-3, epochs=2, batch_size=8, progress=False, dropout=0.0)
    cfg.update(kw)
    return train_sft(config.from_dict(SFTConfig, cfg))


def jsonl_series(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {name: {step: value}} (the numbers trackers should hold)."""
    series: dict[str, dict[int, float]] = {}
    for row in read_metrics(out / "metrics.jsonl"):
        for k, v in row.items():
            if k not in ("step", "time") and isinstance(v, (int, float)):
                series.setdefault(k, {})[row["step"]] = float(v)
    return series


def tensorboard_series(logdir: Path) -> tuple[dict[str, dict[int, float]], str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    text = ""
    for tag in acc.Tags().get("tensors", []):
        if tag.startswith("config"):
            text = acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    return series, text


def assert_same_series(got: dict, want: dict, tol: float = 1e-5):
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for name, points in want.items():
        assert set(got[name]) == set(points), name
        for step, v in points.items():
            assert got[name][step] == pytest.approx(v, rel=tol, abs=tol), (name, step)


def test_tensorboard_gets_every_metric_of_every_step_and_the_config(tmp_path, tiny_gpt2, data):
    pytest.importorskip("tensorboard")
    out = tmp_path / "sft"
    run_sft(tiny_gpt2, data, out, report_to="tensorboard")
    series, text = tensorboard_series(out / "tensorboard")
    want = jsonl_series(out)
    assert "sft/loss" in want and "sft/val_loss" in want
    assert_same_series(series, want)
    assert json.loads(text.strip("`\n"))["lr"] == 1e-3


def test_tensorboard_resume_drops_the_lost_steps(tmp_path, tiny_gpt2, data):
    pytest.importorskip("tensorboard")
    from instructgpt.training import StopTraining
    import instructgpt.sft as sft_mod
    out = tmp_path / "sft"
    original = sft_mod.fit

    def crash(step):
        if step == 6:  # checkpoint at step 4 (epoch end): steps 5 and 6 are lost and redone
            raise StopTraining
    sft_mod.fit = lambda *a, **k: original(*a, **k, on_step=crash)
    try:
        with pytest.raises(StopTraining):
            run_sft(tiny_gpt2, data, out, report_to="tensorboard")
    finally:
        sft_mod.fit = original
    import gc
    gc.collect()  # the crashed run's writer flushes on close (atexit in a real process)
    run_sft(tiny_gpt2, data, out, report_to="tensorboard", resume=True)
    series, _ = tensorboard_series(out / "tensorboard")
    assert_same_series(series, jsonl_series(out))  # one value per step, the resumed run's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    configs = [e for tag in acc.Tags()["tensors"] if tag.startswith("config") for e in acc.Tensors(tag)]
    assert len(configs) == 1   # the config once, not once more per resume


def read_wandb_records(path: str) -> list:
    """The records of a W&B offline run file (``run-*.wandb``): a 7-byte header (":W&B", magic 0xBEE1,
    version), then LevelDB-log blocks of 32 KiB whose chunks carry (crc32, length, type) headers; the
    payloads are ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a chunk the writer has not finished
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # full or last chunk
            r = pb.Record()
            r.ParseFromString(pending)
            records.append(r)
            pending = b""
    return records


def read_finished_wandb_records(path: str, timeout: float = 60.0) -> list:
    """The records once the file ends with the run's exit record. ``run.finish()`` returns when the W&B
    service has the exit record; the service writes and closes the file a moment later (it did not
    in one CI run on a loaded machine), so wait for it, a bounded time."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_run_holds_the_metrics_config_and_name(tmp_path, tiny_gpt2, data, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "instructgpt-tests")
    out = tmp_path / "mysft"
    run_sft(tiny_gpt2, data, out, report_to="wandb")
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    records = read_finished_wandb_records(files[0])
    got: dict[str, dict[int, float]] = {}
    config_items, name = {}, None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            step = int(items.pop("_step", r.history.step.num))
            for k, v in items.items():
                if not k.startswith("_"):
                    got.setdefault(k, {})[step] = v
        elif kind == "run":
            name = r.run.display_name
            config_items.update({i.key: i.value_json for i in r.run.config.update})
    assert name == "sft-mysft"
    assert json.loads(config_items["lr"])["value"] == 1e-3 if "value" in config_items["lr"] else \
        json.loads(config_items["lr"]) == 1e-3
    assert_same_series(got, jsonl_series(out))


def test_mlflow_run_holds_the_metrics_and_params(tmp_path, tiny_gpt2, data, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "sft"
    run_sft(tiny_gpt2, data, out, report_to="mlflow,tensorboard", run_name="my-run")
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "instructgpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "my-run" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["report_to"] == "mlflow,tensorboard"
    want = jsonl_series(out)
    got = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in run.data.metrics}
    assert_same_series(got, want)
    assert tensorboard_series(out / "tensorboard")[0].keys() == want.keys()  # both trackers at once


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), ("stop", "KILLED")])
def test_mlflow_run_of_a_stage_that_fails_or_is_stopped_is_not_finished(tmp_path, tiny_gpt2, data, monkeypatch,
                                                                         error, status):
    """A stage that failed part way, or that Ctrl-C stopped, left its MLflow run FINISHED (like one that ran to
    its end); W&B likewise got exit code 0."""
    pytest.importorskip("mlflow")
    from instructgpt import interrupt
    import instructgpt.sft as sft_mod
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raised = interrupt.Stopped(2, "at sft step 3") if error == "stop" else error
    original = sft_mod.fit

    def fail(step):
        if step == 3:
            raise raised
    monkeypatch.setattr(sft_mod, "fit", lambda *a, **k: original(*a, **k, on_step=fail))
    out = tmp_path / "sft"
    with pytest.raises(type(raised)):
        run_sft(tiny_gpt2, data, out, report_to="mlflow")
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "instructgpt"]
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == status


def test_trackio_local_store_holds_the_metrics(tmp_path, tiny_gpt2, data, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "instructgpt-tests")
    out = tmp_path / "sft"
    run_sft(tiny_gpt2, data, out, report_to="trackio")
    from trackio import SQLiteStorage
    logs = SQLiteStorage.get_logs("instructgpt-tests", "sft-sft")
    got: dict[str, dict[int, float]] = {}
    for row in logs:
        for k, v in row.items():
            if k not in ("step", "timestamp") and isinstance(v, (int, float)):
                got.setdefault(k, {})[row["step"]] = v
    assert_same_series(got, jsonl_series(out))
    assert SQLiteStorage.get_run_config("instructgpt-tests", "sft-sft")["lr"] == 1e-3


def test_rm_ppo_and_pretrain_report_their_namespaced_metrics(tmp_path, tiny_gpt2, tokenizer_dir, data):
    pytest.importorskip("tensorboard")
    from instructgpt.ppo import PPOConfig, train_ppo
    from instructgpt.pretrain import PretrainConfig, train_pretrain
    from instructgpt.rm import RMConfig, train_rm
    train_rm(config.from_dict(RMConfig, dict(model=str(tiny_gpt2), train=str(data / "rm.jsonl"),
                                             out_dir=str(tmp_path / "rm"), batch_size=8, progress=False,
                                             report_to="tensorboard")))
    train_ppo(config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn="tests.ppo_rewards:count_e",
                                               prompts=str(data / "prompts.jsonl"), out_dir=str(tmp_path / "ppo"),
                                               iterations=2, batch_size=4, minibatch_size=4, max_new_tokens=4,
                                               progress=False, report_to="tensorboard")))
    train_pretrain(config.from_dict(PretrainConfig, dict(corpus=str(data / "corpus.txt"), tokenizer=str(tokenizer_dir),
                                                         out_dir=str(tmp_path / "pre"), n_layer=1, n_embd=32,
                                                         n_head=2, seq_len=32, max_steps=2, progress=False,
                                                         report_to="tensorboard")))
    for stage, key in (("rm", "rm/loss"), ("ppo", "ppo/kl"), ("pre", "pretrain/loss")):
        series, text = tensorboard_series(tmp_path / stage / "tensorboard")
        assert key in series and series.keys() == jsonl_series(tmp_path / stage).keys(), stage
        assert "out_dir" in text
    assert "rm/reward_bias" in tensorboard_series(tmp_path / "rm" / "tensorboard")[0]
    assert "time/generate" in tensorboard_series(tmp_path / "ppo" / "tensorboard")[0]


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, tiny_gpt2, data, monkeypatch):
    """A tracker's outage (an MLflow server going away raised MlflowException at the next row and ended a PPO
    run) is a warning: training finishes, metrics.jsonl has every row, the tracker has the rows before."""
    pytest.importorskip("tensorboard")
    from instructgpt import tracking
    original = tracking._TensorBoard.log

    def flaky(self, step, metrics):
        if step >= 3:
            raise ConnectionError("server went away")
        original(self, step, metrics)
    monkeypatch.setattr(tracking._TensorBoard, "log", flaky)
    out = tmp_path / "sft"
    with pytest.warns(UserWarning, match=r"report_to: tensorboard failed at step 3 .*server went away"):
        run_sft(tiny_gpt2, data, out, report_to="tensorboard")
    assert (out / "model.safetensors").is_file()
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 8   # 32 examples / 8, 2 epochs
    series, _ = tensorboard_series(out / "tensorboard")
    assert sorted(series["sft/loss"]) == [1, 2]


def test_a_tracker_that_cannot_start_is_a_config_error_naming_it(tmp_path, tiny_gpt2, data, monkeypatch):
    """MLflow refusing its store (MLFLOW_TRACKING_URI=file:... in MLflow 3, a server that is down) ended the stage in
    a bare MlflowException traceback; the trackers started before it were left open."""
    pytest.importorskip("tensorboard")
    from instructgpt import tracking
    closed = []

    def refused(self, run):
        raise RuntimeError("The filesystem tracking backend is in maintenance mode\nmore text")
    monkeypatch.setattr(tracking._MLflow, "__init__", refused)
    monkeypatch.setattr(tracking._TensorBoard, "close", lambda self, outcome: closed.append(outcome.status))
    with pytest.raises(ConfigError, match=r"report_to: mlflow could not start its run for .*sft \(RuntimeError: The "
                                          r"filesystem tracking backend is in maintenance mode\); fix it or leave "
                                          r"mlflow out of report_to"):
        run_sft(tiny_gpt2, data, tmp_path / "sft", report_to="tensorboard,mlflow")
    assert closed == ["FAILED"]


def test_rm_logs_each_metric_once_per_step(tmp_path, tiny_gpt2, data):
    """The kept epoch's validation after training is logged as rm/kept_val_*: under rm/val_* at the last step it
    sat next to the last epoch's own values (W&B keeps one value per step, TensorBoard drew two points)."""
    from instructgpt.rm import RMConfig, train_rm
    out = tmp_path / "rm"
    train_rm(config.from_dict(RMConfig, dict(model=str(tiny_gpt2), train=str(data / "rm.jsonl"),
                                             valid=str(data / "rm.jsonl"), out_dir=str(out), epochs=2, batch_size=8,
                                             progress=False)))
    seen = [(k, r["step"]) for r in read_metrics(out / "metrics.jsonl") for k in r if k not in ("step", "time")]
    assert len(seen) == len(set(seen)), sorted(p for p in seen if seen.count(p) > 1)
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert {"rm/reward_bias", "rm/kept_val_loss", "rm/kept_val_accuracy"} <= last.keys()
    info = json.loads((out / "instructgpt.json").read_text())   # the same names there: rm/val_* are per epoch
    assert info["rm/kept_val_accuracy"] == last["rm/kept_val_accuracy"] and "rm/val_accuracy" not in info
    assert [h["rm/val_loss"] for h in info["history"]][-1] == read_metrics(out / "metrics.jsonl")[-2]["rm/val_loss"]


def test_rm_resumed_after_its_last_checkpoint_logs_its_summary_once(tmp_path, tiny_gpt2, data):
    """An RM stage killed after its last checkpoint (its summary row logged, the stage not marked done) and
    resumed logged rm/reward_bias and rm/kept_val_* a second time at the last step, in metrics.jsonl and in
    TensorBoard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from instructgpt.rm import RMConfig, train_rm
    out = tmp_path / "rm"
    cfg = dict(model=str(tiny_gpt2), train=str(data / "rm.jsonl"), valid=str(data / "rm.jsonl"), out_dir=str(out),
               epochs=2, batch_size=8, progress=False, report_to="tensorboard")
    train_rm(config.from_dict(RMConfig, cfg))
    train_rm(config.from_dict(RMConfig, {**cfg, "resume": True}))
    rows = read_metrics(out / "metrics.jsonl")
    seen = [(k, r["step"]) for r in rows for k in r if k not in ("step", "time")]
    assert len(seen) == len(set(seen)), sorted(p for p in seen if seen.count(p) > 1)
    assert sum("rm/reward_bias" in r for r in rows) == 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    points = [(tag, e.step) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]
    assert sorted(points) == sorted(seen)


def test_run_passes_report_to_to_every_training_stage_outside_its_key(tmp_path):
    from instructgpt.pipeline import Pipeline, RunConfig

    def planned(report_to):
        return Pipeline(config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), report_to=report_to))).planned()
    plan = planned("tensorboard")
    training = {st.name: st.config.report_to for st, _, _ in plan if st.kind in ("pretrain", "sft", "rm", "ppo")}
    assert training == dict.fromkeys(("base", "sft", "flan", "rm_r1", "ppo_r1", "ppo_ptx_r1"), "tensorboard")
    # reporting elsewhere reuses every stage: trackers are not part of what a stage writes
    assert [key for _, key, _ in plan] == [key for _, key, _ in planned("none")]
    assert RunConfig().report_to == "none"


def test_run_names_each_training_stages_tracker_run_after_the_run_and_the_stage(tmp_path):
    """The tracker runs were named <stage>-<folder>: every round's RM was "rm-rm", its PPO "ppo-ppo", and every
    run folder's SFT "sft-sft", one name for runs W&B and a shared MLflow store could not tell apart."""
    from instructgpt.pipeline import Pipeline, RunConfig
    from instructgpt.tracking import open_run
    plan = Pipeline(config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="exp1", rounds=2,
                                                     report_to="tensorboard"))).planned()
    names = {st.name: open_run(st.config, st.kind, st.config.out_dir).name
             for st, _, _ in plan if st.kind in ("pretrain", "sft", "rm", "ppo")}
    assert names == {stage: f"exp1-{stage}" for stage in ("base", "sft", "flan", "rm_r1", "ppo_r1", "ppo_ptx_r1",
                                                          "rm_r2", "ppo_r2", "ppo_ptx_r2")}


def test_mlflow_keeps_every_stage_of_a_run_in_the_run_folders_store(tmp_path, tiny_gpt2, data, monkeypatch):
    """Each stage made an mlflow.db of its own: 'mlflow ui' on one showed one stage. 'instructgpt run' gives every
    training stage its run folder as tracking_store; a stage alone keeps its store in out_dir."""
    pytest.importorskip("mlflow")
    from instructgpt.pipeline import Pipeline, RunConfig
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = Pipeline(config.from_dict(RunConfig, dict(runs_dir=str(tmp_path / "runs"), name="exp1",
                                                     report_to="mlflow"))).planned()
    stores = {st.config.tracking_store for st, _, _ in plan if st.kind in ("pretrain", "sft", "rm", "ppo")}
    assert stores == {str(tmp_path / "runs" / "exp1")}
    store = tmp_path / "store"
    for stage in ("sft", "sft2"):
        run_sft(tiny_gpt2, data, tmp_path / stage, report_to="mlflow", run_name=stage, tracking_store=str(store))
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "instructgpt"]
    assert sorted(r.info.run_name for r in client.search_runs([exp.experiment_id])) == ["sft", "sft2"]
    assert not (tmp_path / "sft" / "mlflow.db").exists()


def test_unknown_or_missing_tracker_is_a_clear_error(tmp_path, tiny_gpt2, data, monkeypatch):
    with pytest.raises(ConfigError, match="report_to: 'neptune' is not one of none, tensorboard, wandb"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", report_to="tensorboard,neptune"))
    # it said "'none' is not one of none, tensorboard, ..."
    with pytest.raises(ConfigError, match="report_to: none means no tracker; it cannot be listed with trackers"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", report_to="none,tensorboard"))
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to: wandb needs the wandb package.*pip install 'instructgpt\[track\]'"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", report_to="wandb"))
    from instructgpt.cli import main
    code = main(["sft", "model=m", "train=t", "out_dir=o", "report_to=wandb"])
    assert code == 2
    assert config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", report_to="none")).report_to == "none"
