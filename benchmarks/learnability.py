"""Is the synthetic masked-face data learnable, and not trivially so?

Generates the synthetic set, splits it by person (``splits.subject_split``) and
prints, per task, the majority-class rate, a multinomial logistic regression on raw
pixels and a small multi-task CNN (Flax linen + optax, trained for a fixed number of
epochs on whatever JAX finds; about 3 minutes on two idle CPU cores):

  python benchmarks/learnability.py --image_size=64 --cnn_epochs=30

A useful data set puts the logistic regression well below 100% (raw pixels do not
give the answer away) and the CNN well above the majority rate (the labels are
in the faces).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fgmask_jax.data import labels, splits, synthetic

TASKS = tuple(labels.TASKS)


class SmallCNN(nn.Module):
    """Four 3x3 convolutions (the last three stride 2), global average pool, a head per task.

    images: float32[B, S, S, 3] -> {task: logits float32[B, n_classes]}.
    """

    widths: tuple[int, ...] = (16, 32, 64, 128)

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        x = images
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), strides=1 if i == 0 else 2)(x))
        x = x.mean(axis=(1, 2))
        x = nn.relu(nn.Dense(128)(x))
        return {task: nn.Dense(len(classes))(x) for task, classes in labels.TASKS.items()}


def load(args: argparse.Namespace) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """(uint8[N, S, S, 3] images, {task or 'subject_id': int[N]}, seconds to generate)."""
    start = time.perf_counter()
    examples = list(
        synthetic.generate(
            args.num_examples, args.num_subjects, args.seed, args.image_size, workers=args.workers
        )
    )
    seconds = time.perf_counter() - start
    images = np.stack([ex["image"] for ex in examples])
    targets = {k: np.array([ex[k] for ex in examples]) for k in (*TASKS, "subject_id")}
    return images, targets, seconds


def majority(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy on test of always answering the training set's most common class."""
    return float(np.mean(y_test == np.bincount(y_train).argmax()))


def logistic_regression(x_train, y_train, x_test, y_test, max_iter: int) -> float:
    """Test accuracy of a multinomial logistic regression on standardised raw pixels."""
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=0.01, max_iter=max_iter)
    model.fit(scaler.transform(x_train), y_train)
    return float(model.score(scaler.transform(x_test), y_test))


def train_cnn(x_train, y_train, x_test, args) -> tuple[dict[str, np.ndarray], int, int]:
    """Trains ``SmallCNN`` for ``args.cnn_epochs`` (fewer if ``args.cnn_seconds`` runs out
    first); returns test predictions {task: int[N_test]}, the number of epochs and of steps."""
    model = SmallCNN()
    key = jax.random.key(args.seed)
    params = model.init(key, jnp.zeros((1, *x_train.shape[1:]), jnp.float32))
    optimizer = optax.adam(args.learning_rate)
    opt_state = optimizer.init(params)

    def loss_fn(params, images, targets):
        logits = model.apply(params, images)
        return sum(
            optax.softmax_cross_entropy_with_integer_labels(logits[t], targets[t]).mean()
            for t in TASKS
        )

    @jax.jit
    def step(params, opt_state, images, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(
        lambda params, images: {t: v.argmax(-1) for t, v in model.apply(params, images).items()}
    )
    rng = np.random.default_rng(args.seed)
    n, batch = len(x_train), args.batch_size
    start, epochs, steps = time.perf_counter(), 0, 0
    while epochs < args.cnn_epochs and time.perf_counter() - start < args.cnn_seconds:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch]
            images = x_train[idx]
            flip = rng.uniform(size=batch) < 0.5  # a mirrored face keeps its labels
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
            params, opt_state, loss = step(
                params, opt_state, images, {t: y_train[t][idx] for t in TASKS}
            )
            steps += 1
        epochs += 1
        print(
            f"  epoch {epochs}: loss {float(loss):.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    preds = [predict(params, x_test[i : i + 256]) for i in range(0, len(x_test), 256)]
    return {t: np.concatenate([np.asarray(p[t]) for p in preds]) for t in TASKS}, epochs, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=3404)
    parser.add_argument("--num_subjects", type=int, default=82)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="processes that draw images")
    parser.add_argument("--cnn_epochs", type=int, default=30, help="CNN training epochs")
    parser.add_argument("--cnn_seconds", type=float, default=1800.0, help="CNN time limit")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lr_max_iter", type=int, default=300, help="logistic regression")
    args = parser.parse_args()

    images, targets, gen_seconds = load(args)
    print(
        f"generated {len(images)} images of {args.image_size} px in {gen_seconds:.1f} s "
        f"with {args.workers} workers"
    )
    train, test = splits.subject_split(targets["subject_id"], seed=splits.SEED)
    print(
        f"subject-disjoint split: {len(train)} train, {len(test)} test images, "
        f"{len(np.unique(targets['subject_id'][test]))} test persons"
    )
    x = images.astype(np.float32) / 255.0
    flat = x.reshape(len(x), -1)

    rows = {}
    for task in TASKS:
        y = targets[task]
        start = time.perf_counter()
        lr = logistic_regression(flat[train], y[train], flat[test], y[test], args.lr_max_iter)
        print(f"  logistic regression, {task}: {lr:.3f} ({time.perf_counter() - start:.0f} s)")
        rows[task] = [majority(y[train], y[test]), lr]

    mean, std = x[train].mean((0, 1, 2)), x[train].std((0, 1, 2))
    x = (x - mean) / std
    start = time.perf_counter()
    preds, epochs, steps = train_cnn(x[train], {t: targets[t][train] for t in TASKS}, x[test], args)
    cnn_seconds = time.perf_counter() - start
    for task in TASKS:
        rows[task].append(float(np.mean(preds[task] == targets[task][test])))

    print(
        f"\nsubject-disjoint test accuracy ({args.image_size} px; CNN: {epochs} epochs, "
        f"{steps} steps, {cnn_seconds:.0f} s)"
    )
    print(f"{'task':<12}{'majority':>10}{'logreg':>10}{'cnn':>10}")
    for task, (maj, lr, cnn) in rows.items():
        print(f"{task:<12}{maj:>10.3f}{lr:>10.3f}{cnn:>10.3f}")


if __name__ == "__main__":
    main()
