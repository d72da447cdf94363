"""The training loop: settings, the run they describe (data, weights, optimizer, schedule,
checkpoints), and its epochs.

A :class:`Run` is prepared completely before the first step (data checked against the network,
weights loaded, the checkpoint folder proved writable), then :meth:`Run.fit` trains. Every
random choice is a function of the seed, the epoch and the step, and the checkpoint holds all
the rest, so a resumed run ends with the same weights, bit for bit, as one never stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..compiler import CnncError, DataError, UsageError, error
from ..runtime import weights as weights_io
from ..runtime.losses import check_loss
from . import checkpoint as ckpt
from .data import Dataset, check_against, open_data, split
from .engine import Engine, frozen_layers
from .loader import Augment, batches, epoch_order
from .metrics import Tally
from .optim import DEFAULT_LR, make_optimizer
from .schedule import parse_schedule


@dataclass
class Settings:
    """What a run is asked to do; saved in its checkpoints, overridable on resume."""

    data: str | None = None
    val: str | None = None
    val_split: float | None = None
    epochs: int = 10
    batch: int = 32
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    lr: float | None = None  # None: the optimizer's default
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None  # None: the optimizer's default
    schedule: str = "constant"
    warmup: int = 0
    augment: str | None = None
    freeze: list[str] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError(error(f"--epochs must be at least 1, got {self.epochs}"))
        if self.batch < 1:
            raise UsageError(error(f"--batch must be at least 1, got {self.batch}"))
        if self.val is not None and self.val_split is not None:
            raise UsageError(error("give --val or --val-split, not both"))
        if self.seed < 0:
            raise UsageError(error(f"--seed must be at least 0, got {self.seed}"))
        check_loss(self.loss)
        Augment.parse(self.augment)
        parse_schedule(self.schedule, self.learning_rate, self.epochs, self.warmup)
        make_optimizer(self.optimizer, self.momentum, self.nesterov, self.weight_decay)

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR.get(self.optimizer, 0.01) if self.lr is None else self.lr


class NonFinite(CnncError):
    """Training stopped: a loss or gradient was NaN or infinite (exit 1)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``epochs`` completed, ``checkpoint`` the folder holding the
    last of them (or None)."""

    def __init__(self, epochs: int, checkpoint: Path | None):
        super().__init__()
        self.epochs, self.checkpoint = epochs, checkpoint


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The dropout masks' seed of one step."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


class Run:
    """One training run, prepared and checked; ``notes`` says what the caller should be told
    before it starts (layers left fresh, settings changed on resume)."""

    def __init__(
        self,
        net,
        given: dict,
        weights=None,
        partial: bool = False,
        checkpoint: str | Path | None = None,
        resume: str | Path | None = None,
        device: str = "cpu",
        train_data: Dataset | None = None,
        val_data: Dataset | None = None,
    ):
        unknown = set(given) - set(Settings.names())
        if unknown:
            raise TypeError(f"unknown training settings: {sorted(unknown)}")
        self.net, self.device = net, device
        self.notes: list[str] = []
        self.history: list[dict] = []
        self.start = 0
        if len(net.inputs) != 1 or len(net.outputs) != 1:
            raise UsageError(
                error(
                    f"training takes a network of one input and one output; '{net.name}' has "
                    f"{len(net.inputs)} and {len(net.outputs)}"
                )
            )
        saved_optimizer = None
        if resume is not None:
            meta, self.weights, saved_optimizer = ckpt.load(resume, net)
            saved = meta["settings"]
            self.settings = Settings(**{**saved, **given})
            changed = [f"{k} {saved.get(k)} -> {v}" for k, v in given.items() if saved.get(k) != v]
            self.start, self.history = meta["epoch"], meta["history"]
            self.notes.append(
                f"resuming from {resume} after epoch {self.start} of {self.settings.epochs}"
                + (f"; changed: {', '.join(changed)}" if changed else "")
            )
            if self.start >= self.settings.epochs:
                self.notes.append(
                    f"nothing to train: the checkpoint has finished {self.start} epochs "
                    f"(give --epochs above {self.start} to train on)"
                )
            if weights is not None:
                self.notes.append("--weights is ignored on --resume (the checkpoint's are used)")
            if checkpoint is None:
                checkpoint = resume
        else:
            self.settings = Settings(**given)
        s = self.settings
        s.check()
        if s.data is None and train_data is None:
            raise UsageError(error("give the training data: --data FILE.npz | DIR | digits"))
        self.frozen = frozen_layers(net, s.freeze)
        self.augment = Augment.parse(s.augment)
        self.schedule = parse_schedule(s.schedule, s.learning_rate, s.epochs, s.warmup)
        self.optimizer = make_optimizer(s.optimizer, s.momentum, s.nesterov, s.weight_decay)
        if saved_optimizer is not None:
            if meta.get("optimizer") != self.optimizer.name:
                self.notes.append(f"the optimizer's state starts afresh ({self.optimizer.name})")
            else:
                self.optimizer.restore(saved_optimizer)
        self.train_data, self.val_data = self._data(train_data, val_data)
        if resume is None:
            self.weights = self._initial(weights, partial)
        self.engine = Engine(net, device, self.frozen)
        self.engine.check_fits(min(s.batch, len(self.train_data)))
        self.checkpoint = None
        if checkpoint is not None:
            self.checkpoint = ckpt.prepare(checkpoint, fresh=resume is None)

    def _data(self, train_data, val_data):
        s, shape = self.settings, next(iter(self.net.inputs.values())).shape
        train = train_data or open_data(s.data, shape, "train")
        val = val_data
        if val is None and s.val is not None:
            val = open_data(s.val, shape, "val", "--val")
        if s.val_split is not None:
            if val is not None:
                raise UsageError(error("give --val or --val-split, not both"))
            train, val = split(train, s.val_split, s.seed)
        elif val is None and s.data == "digits":
            val = open_data("digits", shape, "val")
        check_against(train, self.net, s.loss)
        if val is not None:
            check_against(val, self.net, s.loss)
        if self.augment and len(train.sample_shape) != 3:
            raise UsageError(error("--augment needs image inputs (C x H x W)"))
        return train, val

    def _initial(self, weights, partial: bool) -> dict:
        s = self.settings
        if weights is None:
            if partial:
                raise UsageError(error("--partial goes with --weights INIT.npz"))
            return weights_io.initialise(self.net, s.seed)
        if isinstance(weights, dict):
            from ..runtime.session import Session

            return dict(Session.checked_weights(self.net, weights))
        if not partial:
            return weights_io.load(self.net, weights)
        from .init import load_partial

        loaded, note = load_partial(self.net, weights, weights_io.initialise(self.net, s.seed))
        self.notes.append(note)
        return loaded

    # ---- the epochs --------------------------------------------------------------------

    def fit(self, on_epoch=None, progress=None) -> tuple[list[dict], dict]:
        """Train the remaining epochs; ``on_epoch(entry)`` after each, ``progress(total)``
        returns a bar with ``update(n)`` and ``close()`` for the steps of an epoch."""
        s, engine = self.settings, self.engine
        classes = next(iter(self.net.outputs.values())).shape[0]
        for epoch in range(self.start, s.epochs):
            lr = self.schedule.rate(epoch)
            t0 = time.perf_counter()
            tally = Tally(s.loss, classes)
            order = epoch_order(len(self.train_data), s.seed, epoch)
            steps = -(-len(order) // s.batch)
            bar = progress(steps, epoch) if progress else None
            try:
                loader = batches(self.train_data, order, s.batch, self.augment, s.seed, epoch)
                for step, (x, y) in enumerate(loader):
                    seed = step_seed(s.seed, epoch, step)
                    value, grads, logits = engine.step(self.weights, x, y, s.loss, seed)
                    if grads is None or not all(np.isfinite(g).all() for g in grads.values()):
                        raise self._non_finite(epoch, step, steps, value, x, y, seed, lr)
                    with np.errstate(over="ignore", invalid="ignore"):  # caught next step
                        self.weights.update(engine.running_statistics(len(x), self.weights))
                        self.optimizer.step(self.weights, grads, lr)
                    engine.changed()
                    tally.add(value, len(x), logits, y)
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:
                raise Interrupted(epoch, self.checkpoint if self._saved() else None) from None
            finally:
                if bar is not None:
                    bar.close()
            train_s = time.perf_counter() - t0
            entry = {
                "epoch": epoch + 1,
                "loss": tally.loss,
                "accuracy": tally.accuracy,
                "val_loss": None,
                "val_accuracy": None,
                "lr": lr,
                "seconds": None,
                "images_per_second": len(order) / max(train_s, 1e-9),
            }
            if self.val_data is not None:
                try:
                    result = evaluate_data(engine, self.weights, self.val_data, s.loss, s.batch)
                except KeyboardInterrupt:
                    raise Interrupted(epoch, self.checkpoint if self._saved() else None) from None
                entry["val_loss"], entry["val_accuracy"] = result["loss"], result["accuracy"]
            entry["seconds"] = time.perf_counter() - t0
            self.history.append(entry)
            if self.checkpoint is not None:
                self._save(epoch + 1)
            if on_epoch is not None:
                on_epoch(entry)
        return self.history, self.weights

    def _saved(self) -> bool:
        return self.checkpoint is not None and (self.checkpoint / ckpt.FILE).is_file()

    def _save(self, epochs_done: int) -> None:
        state = {
            "network": self.net.name,
            "epoch": epochs_done,
            "settings": asdict(self.settings),
            "history": self.history,
            "seed": self.settings.seed,
            "optimizer": self.optimizer.name,
        }
        try:
            ckpt.save(self.checkpoint, state, self.weights, self.optimizer.state())
        except KeyboardInterrupt:
            raise Interrupted(epochs_done - 1, self.checkpoint if self._saved() else None) from None

    def _non_finite(self, epoch, step, steps, value, x, y, seed, lr) -> NonFinite:
        from .diagnose import first_non_finite

        where = first_non_finite(self.engine, self.weights, x, y, self.settings.loss, seed)
        what = f"the loss is {value}" if not np.isfinite(value) else "a gradient is not finite"
        base = self.settings.learning_rate
        kept = (
            f"; the last good checkpoint (epoch {epoch}) stays in {self.checkpoint}"
            if self.checkpoint is not None and epoch > 0 and self._saved()
            else ""
        )
        return NonFinite(
            error(
                f"training stopped in epoch {epoch + 1}, step {step + 1} of {steps}: {what}; "
                f"the first value that was not finite: {where}{kept}",
                hint=f"lower the learning rate (this epoch ran at {lr:g}; try --lr {base / 10:g})",
            )
        )


def evaluate_data(
    engine: Engine, weights: dict, data: Dataset, loss: str, batch: int, detail=False
) -> dict:
    """Loss and accuracy (with ``detail``: top-5 and the confusion matrix) over ``data``, in
    evaluation mode (running statistics, no dropping)."""
    from ..runtime.losses import check_targets, loss_and_grad

    classes = next(iter(engine.net.outputs.values())).shape[0]
    tally = Tally(loss, classes, detail)
    order = np.arange(len(data))
    for x, y in batches(data, order, batch):
        ex = engine.predict(weights, x)
        logits = engine.logits(ex) if loss == "cross_entropy" else engine.outputs(ex)
        target = check_targets(loss, logits.shape, y, f"the targets of {data.name}")
        value, _ = loss_and_grad(loss, logits, target)
        tally.add(value, len(x), logits, y)
    return tally.result()


def train(
    net,
    data=None,
    val=None,
    val_split=None,
    *,
    weights=None,
    partial=False,
    checkpoint=None,
    resume=None,
    device="cpu",
    on_epoch=None,
    **settings,
):
    """See :func:`cnnc.train`."""
    given = {k: v for k, v in settings.items() if v is not None}
    train_data = val_data = None
    for name, value in (("data", data), ("val", val)):
        if isinstance(value, (str, Path)):
            given[name] = str(value)
        elif value is not None:
            shape = next(iter(net.inputs.values())).shape
            ds = open_data(value, shape)
            train_data, val_data = (ds, val_data) if name == "data" else (train_data, ds)
    if val_split is not None:
        given["val_split"] = val_split
    if "freeze" in given and isinstance(given["freeze"], str):
        given["freeze"] = [given["freeze"]]
    run = Run(net, given, weights, partial, checkpoint, resume, device, train_data, val_data)
    return run.fit(on_epoch)


def evaluate(net, weights, data, loss="cross_entropy", batch=32, device="cpu") -> dict:
    """See :func:`cnnc.evaluate`."""
    check_loss(loss)
    if batch < 1:
        raise UsageError(error(f"batch must be at least 1, got {batch}"))
    if isinstance(weights, (str, Path)):
        weights = weights_io.load(net, weights)
    else:
        from ..runtime.session import Session

        weights = Session.checked_weights(net, weights)
    shape = next(iter(net.inputs.values())).shape
    dataset = open_data(data if not isinstance(data, Path) else str(data), shape, "val")
    check_against(dataset, net, loss)
    if not len(dataset):
        raise DataError(error(f"{dataset.name} holds no samples"))
    engine = Engine(net, device, training=False)
    result = evaluate_data(engine, weights, dataset, loss, batch, detail=True)
    result["classes"] = next(iter(net.outputs.values())).shape[0]
    result["data"] = dataset.name
    return result
