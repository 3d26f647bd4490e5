"""RunLogger's trackers: W&B (offline), MLflow (local store), CSV; read back through each
library's own files or API."""

import json
import struct
import sys
import time

import pytest
from PIL import Image

from mimkit.engine.logging import RunLogger, read_log
from mimkit.engine.trackers import flatten, read_csv, select_loggers
from mimkit.errors import UserError

CONFIG = {"model": {"name": "mae_vit_tiny_cifar", "args": {}}, "train": {"epochs": 2}}
RECORDS = [
    {"kind": "train", "epoch": 1, "step": 2, "loss": 0.9, "lr": 1e-3, "img_s": 100.0},
    {"kind": "train", "epoch": 1, "step": 4, "loss": 0.7, "lr": 2e-3, "img_s": 110.0},
    {"kind": "epoch", "epoch": 1, "step": 4, "loss": 0.8, "skipped_images": 0},
    {"kind": "train", "epoch": 2, "step": 6, "loss": 0.5, "lr": 1e-3, "img_s": 120.0},
]


def _log_run(out, loggers, **kw):
    logger = RunLogger(out, loggers, config=CONFIG, run_name="tiny", **kw)
    for r in RECORDS:
        logger.write(r)
    Image.new("RGB", (8, 6), (255, 0, 0)).save(out / "loss.png")
    logger.log_image(out / "loss.png")
    logger.close()
    logger.finish()
    return logger


def test_logger_names_are_checked_and_config_flattened():
    assert select_loggers(["csv", "wandb", "csv", "tensorboard"], tensorboard=False) == [
        "csv",
        "wandb",
    ]
    with pytest.raises(UserError, match="'train.loggers' has 'wandbb'"):
        select_loggers(["wandbb"])
    assert flatten(CONFIG) == {
        "model.name": "mae_vit_tiny_cifar",
        "model.args": {},
        "train.epochs": 2,
    }


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"pip install 'mimkit\[wandb\]'"):
        RunLogger(tmp_path, ["wandb"])


def test_csv_rows_and_resume(tmp_path):
    _log_run(tmp_path, ["csv"])
    train = read_csv(tmp_path / "csv" / "train.csv")
    assert [(r["step"], float(r["loss"])) for r in train] == [("2", 0.9), ("4", 0.7), ("6", 0.5)]
    assert read_csv(tmp_path / "csv" / "epoch.csv")[0]["skipped_images"] == "0.0"
    params = {r["key"]: r["value"] for r in read_csv(tmp_path / "csv" / "params.csv")}
    assert params["train.epochs"] == "2"
    # resume after epoch 1 (step 4): rows written later are dropped from log and CSV alike
    logger = RunLogger(tmp_path, ["csv"])
    assert logger.truncate(step=4, epochs_done=1) == 1
    assert [r["step"] for r in read_csv(tmp_path / "csv" / "train.csv")] == ["2", "4"]
    logger.write({"kind": "train", "epoch": 2, "step": 6, "loss": 0.4, "data_wait": 0.1})
    rows = read_csv(tmp_path / "csv" / "train.csv")
    assert rows[-1]["loss"] == "0.4" and rows[-1]["data_wait"] == "0.1" and rows[0]["lr"]
    assert len(read_log(tmp_path / "log.jsonl")) == 4


def _wandb_records(path):
    """Records of a W&B offline run file (.wandb: a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            return
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _complete_wandb_records(path, timeout=60.0):
    """The run file's records once W&B's service has written all of them: ``run.finish()``
    can return before the service flushes the file on a loaded machine (CI saw only part
    of it), so shut the service down and wait for the closing ``exit`` record."""
    import wandb

    wandb.teardown()
    deadline = time.monotonic() + timeout
    while True:
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records]
            raise AssertionError(f"{path}: no exit record after {timeout:.0f} s: {kinds}")
        time.sleep(0.5)


def test_wandb_offline_run_holds_metrics_config_and_image(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _log_run(tmp_path, ["wandb"], project="proj", tags=["tiny", "cpu"])
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _complete_wandb_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, list(run.tags)) == ("proj", "tiny", ["tiny", "cpu"])
    config = {}
    for r in records:
        if r.WhichOneof("record_type") in ("run", "config"):
            part = r.run.config if r.WhichOneof("record_type") == "run" else r.config
            config.update({u.key: json.loads(u.value_json) for u in part.update})
    assert config["train.epochs"] == 2 and config["model.name"] == "mae_vit_tiny_cifar"
    rows = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert loss == [(2, 0.9), (4, 0.7), (6, 0.5)]
    assert [r["epoch/loss"] for r in rows if "epoch/loss" in r] == [0.8]
    (image,) = [r for r in rows if "images/loss/_type" in r]
    assert image["step"] == 6 and image["images/loss/_type"] == "image-file"
    assert (run_file.parent / "files" / image["images/loss/path"]).is_file()
    assert (tmp_path / "wandb-run-id").read_text().strip() == run.run_id


def test_tensorboard_events_hold_metrics_config_and_image(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_run(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    loss = [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")]
    assert loss == [(2, 0.9), (4, 0.7), (6, 0.5)]
    assert [e.value for e in events.Scalars("epoch/skipped_images")] == [0.0]
    assert "train/step" not in events.Tags()["scalars"]  # axes are not metrics
    (image,) = events.Images("loss")
    assert (image.step, image.width, image.height) == (6, 8, 6)
    (text,) = events.Tensors("config/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| train.epochs | 2 |" in table and "| model.name | mae_vit_tiny_cifar |" in table


def test_mlflow_local_store_holds_metrics_params_and_image(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    _log_run(tmp_path, ["mlflow", "csv"], tags=["tiny"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run_id = (tmp_path / "mlflow-run-id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.tags["tiny"] == "true"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(2, 0.9), (4, 0.7), (6, 0.5)]
    assert [a.path for a in client.list_artifacts(run_id, "images")] == ["images/loss.png"]
    # a resumed run logs into the same MLflow run; new parameters are added
    logger = RunLogger(tmp_path, ["mlflow"], config={**CONFIG, "extra": 1})
    logger.write({"kind": "train", "epoch": 2, "step": 8, "loss": 0.3})
    logger.finish()
    assert client.get_run(run_id).data.params["extra"] == "1"
    assert len(client.get_metric_history(run_id, "train/loss")) == 4
