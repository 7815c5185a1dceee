"""train.log_with: several accelerate trackers at once (wandb offline, TensorBoard, MLflow), the config, eval heatmaps."""

import pytest

from red_rlhf.config import ConfigError, TrainConfig, load_config
from red_rlhf.training.trainer import Trainer
from red_rlhf.training.tracking import HEATMAP_TAG as HEATMAP, tracker_names


def cfg(tmp_path, *overrides):
    return load_config("configs/toy.yaml", ["--train.steps=2", "--train.eval_every=1", "--data.eval_size=4",
                                            "--train.save_every=0", "--rollout.batch_size=8",
                                            f"--train.output_dir={tmp_path / 'run'}", *overrides])


def test_wandb_offline_and_tensorboard_get_metrics_config_and_heatmaps(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = Trainer(cfg(tmp_path, "--train.log_with=wandb,tensorboard", "--algo.policy_lr=0.00123"))
    assert [t.name for t in trainer.acc.trackers] == [] and [str(t) for t in trainer.acc.log_with] == ["wandb", "tensorboard"]
    logged = []  # what wandb's run was given (an offline run keeps it in a binary log only wandb itself reads)
    original_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, step=None, **kwargs):
        logged.append((step, dict(data)))
        return original_log(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    history = trainer.train()
    run = tmp_path / "run"
    wandb_run = trainer.acc.get_tracker("wandb", unwrap=True)
    assert wandb_run.config["algo.policy_lr"] == 0.00123 and wandb_run.config["data.eval_size"] == 4
    assert [(step, d["reward_mean"]) for step, d in logged if "reward_mean" in d] == \
        [(m["step"], m["reward_mean"]) for m in history]
    assert [(step, type(d[HEATMAP])) for step, d in logged if HEATMAP in d] == [(1, wandb.Html), (2, wandb.Html)]
    [offline] = list((tmp_path / "wandb").glob("offline-run-*"))  # wandb wrote the heatmap pages offline
    heatmaps = sorted((offline / "files" / "media" / "html").rglob("*.html"))
    assert [h.read_text() for h in heatmaps] == [(run / "heatmaps" / f"step_00000{s}.html").read_text() for s in (1, 2)]
    assert "held-out samples, step 2" in heatmaps[-1].read_text()
    # TensorBoard: the same scalars, and the heatmap as an image at each evaluation step
    acc = EventAccumulator(str(run / "red-rlhf"), size_guidance={"images": 0}).Reload()  # hparams go to a sub-folder
    assert [e.value for e in acc.Scalars("reward_mean")] == pytest.approx([m["reward_mean"] for m in history])
    assert [e.step for e in acc.Images("eval/token_rewards")] == [1, 2]
    # the same heatmaps as files in the run folder, one per evaluation
    assert sorted(p.name for p in (run / "heatmaps").iterdir()) == ["step_000001.html", "step_000002.html"]


def test_heatmap_shows_the_scored_tokens_and_their_rewards(tmp_path):
    from red_rlhf.training.tracking import heatmap_image, heatmap_rows

    trainer = Trainer(cfg(tmp_path, "--train.log_with="))
    prompts = ["the movie was", "i liked the", "a film"]
    rows = heatmap_rows(trainer, prompts, [" good good bad", "", " bad"])
    assert [r.response for r in rows] == [" good good bad", " bad"]  # empty responses are left out
    for row in rows:  # the run's reward (the share of "good" words), placed by RED: rewards sum to R(x, y) - R(x)
        assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score)
    assert rows[0].final_score == pytest.approx(2 / 3)
    image = heatmap_image(rows)
    assert image.dtype.name == "uint8" and image.ndim == 3 and image.shape[2] == 3


def test_tracker_names_keep_the_order_given_and_name_bad_trackers(monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard", "wandb", "mlflow"])
    assert tracker_names(TrainConfig(log_with=["wandb", "tensorboard", "wandb"])) == ["wandb", "tensorboard"]
    assert tracker_names(TrainConfig(log_with=[])) == []
    with pytest.raises(ConfigError, match=r"train.log_with: unknown tracker 'wandbb'; accelerate has \["):
        tracker_names(TrainConfig(log_with=["wandbb"]))
    with pytest.raises(ConfigError, match=r"train.log_with: tracker 'comet_ml' needs its package.*pip install comet-ml"):
        tracker_names(TrainConfig(log_with=["tensorboard", "comet_ml"]))


def test_the_removed_tensorboard_switch_names_its_replacement(tmp_path):
    message = r"train.tensorboard was removed: drop 'tensorboard' from train.log_with \(train.log_with: \[\]"
    with pytest.raises(ConfigError, match=message):
        load_config("configs/toy.yaml", ["--train.tensorboard=false"])
    old = tmp_path / "old.yaml"
    old.write_text("base: toy\ntrain:\n  tensorboard: false\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(old))


def test_mlflow_gets_params_metrics_and_the_heatmap_page(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a local file store, no server
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    trainer = Trainer(cfg(tmp_path, "--train.log_with=mlflow", "--train.steps=1", "--algo.policy_lr=0.00123"))
    history = trainer.train()
    client = mlflow.MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("red-rlhf").experiment_id])
    assert run.data.params["algo.policy_lr"] == "0.00123"
    assert run.data.metrics["reward_mean"] == pytest.approx(history[-1]["reward_mean"])
    [page] = [a.path for a in client.list_artifacts(run.info.run_id, "heatmaps")]
    local = client.download_artifacts(run.info.run_id, page, str(tmp_path / "got"))
    assert open(local).read() == (tmp_path / "run" / "heatmaps" / "step_000001.html").read_text()
