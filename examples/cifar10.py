"""CIFAR-10: one small ResNet-style CNN trained three ways at the same budget and seed:
cross-entropy (Dense + softmax), exact harmonic loss, and sampled harmonic loss with k=4; plus a
pixel-space linear harmonic classifier whose 10 centers are drawn as 32x32 colour images.

    python examples/cifar10.py                                   # keras.datasets.cifar10 (download)
    python examples/cifar10.py --data-dir ../shared/data/cifar10-images.tar.gz --epochs 5

``--data-dir`` takes the extracted image folders (``train/<class>/*.jpg``, ``test/...``), the
``.tar.gz`` holding them, or the standard ``cifar-10-batches-py`` folder. Writes results.json,
curves.png and centers.png to --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

from exponents import eta_value  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_image_folder(root: str, split: str, limit: int | None):
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(glob.glob(os.path.join(root, split, name, "*")))
        if not files:
            raise FileNotFoundError(f"no images in {os.path.join(root, split, name)}")
        if limit:
            files = files[: max(1, limit // len(CLASSES))]
        for path in files:
            images.append(tf.io.decode_image(tf.io.read_file(path), channels=3).numpy())
            labels.append(label)
    return np.stack(images), np.array(labels, np.int32)


def _load_batches_py(root: str, limit: int | None):
    def read(name):
        with open(os.path.join(root, name), "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.array(d[b"labels"], np.int32)

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read("test_batch")
    return _subsample(x_train, y_train, limit), _subsample(x_test, y_test, limit)


def _subsample(x, y, limit):
    if not limit:
        return x, y
    idx = np.concatenate([np.flatnonzero(y == c)[: max(1, limit // 10)] for c in range(10)])
    return x[idx], y[idx]


def load_cifar10(data_dir: str | None, limit: int | None = None):
    """``((x_train, y_train), (x_test, y_test))``, uint8 ``[N, 32, 32, 3]`` and int32 labels."""
    if data_dir is None:
        (xt, yt), (xv, yv) = keras.datasets.cifar10.load_data()
        return _subsample(xt, yt.reshape(-1), limit), _subsample(xv, yv.reshape(-1), limit)
    if data_dir.endswith((".tar.gz", ".tgz")):
        extracted = tempfile.mkdtemp(prefix="cifar10-")
        with tarfile.open(data_dir) as tar:
            tar.extractall(extracted, filter="data")
        data_dir = extracted
    if os.path.exists(os.path.join(data_dir, "data_batch_1")):
        return _load_batches_py(data_dir, limit)
    for root in (
        data_dir,
        os.path.join(data_dir, "cifar10-images"),
        os.path.join(data_dir, "cifar-10-batches-py"),
    ):
        if os.path.exists(os.path.join(root, "data_batch_1")):
            return _load_batches_py(root, limit)
        if os.path.isdir(os.path.join(root, "train")):
            return _load_image_folder(root, "train", limit), _load_image_folder(root, "test", limit)
    raise FileNotFoundError(
        f"{data_dir}: expected train/<class>/ and test/<class>/ image folders or cifar-10-batches-py"
    )


def augmented(x, y, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled training batches with random flips and translations. The augmentation runs in
    the input pipeline: inside the model, Keras's random layers make ``jit_compile=True`` fall
    back to no XLA with only a warning."""
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    shift = keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)

    def augment(images, labels):
        images = tf.cast(images, tf.float32)
        return shift(flip(images, training=True), training=True), labels

    return ds.batch(batch_size).map(augment, num_parallel_calls=2).prefetch(2)


def features(inputs, width: int = 32, feature_dim: int = 64):
    """A small ResNet-style body: conv stem, three stages of two residual blocks, pooling."""
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
            y = keras.layers.BatchNormalization()(y)
            y = keras.layers.ReLU()(y)
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization()(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, stride, use_bias=False)(shortcut)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(feature_dim)(x)


def build(kind: str, seed: int, width: int, eta: str | None = None, distance: str = "euclidean"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input([32, 32, 3])
    h = features(inputs, width)
    if kind == "ce":
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
        return model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), "accuracy"
    eta, eta_init = eta_value(eta, h.shape[-1])
    head = ht.HarmonicLMHead(
        10, eta=eta, eta_init=eta_init, distance=distance, name="harmonic_head"
    )
    model = ht.HarmonicModel(inputs, head(h))
    if kind == "exact":
        loss = ht.HarmonicLoss()
    else:  # the prototype's CIFAR-10 setting: 4 negatives per image, none equal to its label
        # The prototype's estimator itself: at V = 10 HarmonicLoss would train exactly.
        prototype = ht.SampledOptions.prototype(k=4)
        loss = ht.HarmonicLoss(sampled=prototype, seed=seed, exact_fallback=False)
    return model, loss, ht.HarmonicAccuracy()


def expected_calibration_error(confidence, correct, bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) x |accuracy -
    mean confidence| in the bin."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            total += in_bin.mean() * gap
    return float(total)


RUN_NAMES = {"ce": "cross-entropy", "exact": "exact harmonic", "sampled": "sampled harmonic (k=4)"}


def train_run(kind, args, data):
    (x_train, y_train), (x_test, y_test) = data
    model, loss, metric = build(kind, args.seed, args.width, args.eta, args.distance)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(lr), loss=loss, metrics=[metric], jit_compile=True)
    print(f"\n== {RUN_NAMES[kind]}{'' if kind == 'ce' else f' ({args.distance})'}", flush=True)
    start = time.perf_counter()
    hist = model.fit(
        augmented(x_train, y_train, args.batch_size, args.seed),
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
    probs = tf.nn.softmax(model.predict(x_test, batch_size=500, verbose=0)).numpy()
    return {
        "name": RUN_NAMES[kind],
        "kind": kind,
        "distance": None if kind == "ce" else args.distance,
        "eta": None if kind == "ce" else float(model.harmonic_head.resolved_eta()),
        "test_accuracy": float(test_acc),
        "test_ece": expected_calibration_error(probs.max(-1), probs.argmax(-1) == y_test),
        "test_loss": float(test_loss),
        "train_loss": [float(v) for v in hist.history["loss"]],
        "val_accuracy": [float(v) for v in hist.history["val_accuracy"]],
        "val_loss": [float(v) for v in hist.history["val_loss"]],
        "seconds": seconds,
    }


def pixel_centers(args, data):
    """A linear harmonic classifier on raw pixels: its 10 centers are class prototypes."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    inputs = keras.Input([32, 32, 3])
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    # All centers start at mid-grey: the labels break the symmetry, and no initial noise is left
    # in the picture.
    head = ht.HarmonicLMHead(
        10,
        eta=eta_value(args.pixel_eta, 32 * 32 * 3)[0],
        centers_initializer=keras.initializers.Constant(0.5),
        # The paper's L2 regularisation of the centers (pulls them toward 0: black).
        centers_regularizer=keras.regularizers.L2(args.pixel_l2) if args.pixel_l2 else None,
        name="pixel_head",
    )
    model = ht.HarmonicModel(inputs, head(flat))
    model.compile(
        keras.optimizers.Adam(args.pixel_lr),
        loss=ht.HarmonicLoss(),
        metrics=[ht.HarmonicAccuracy()],
        jit_compile=True,
    )
    print("\n== pixel-space linear harmonic classifier", flush=True)
    model.fit(x_train, y_train, batch_size=256, epochs=args.pixel_epochs, verbose=args.verbose)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    centers = head.centers.numpy().reshape(10, 32, 32, 3)
    return centers, float(acc), prototype_correlations(centers, x_train, y_train)


def prototype_correlations(centers: np.ndarray, x_train: np.ndarray, y_train: np.ndarray):
    """Per class, the Pearson correlation of its center with the class's mean training image
    (pixels in [0, 1]): how much the center looks like a prototype of its class."""
    out = []
    for c in range(10):
        mean_image = x_train[y_train == c].astype(np.float64).mean(0) / 255.0
        out.append(float(np.corrcoef(centers[c].ravel(), mean_image.ravel())[0, 1]))
    return out


def plot(results, centers, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        epochs = np.arange(1, len(r["val_accuracy"]) + 1)
        axes[0].plot(epochs, r["val_accuracy"], marker="o", label=r["name"])
        axes[1].plot(epochs, r["val_loss"], marker="o", label=r["name"])
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("test loss (exact; CE vs harmonic are different losses)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, 5, figsize=(10, 4.6))
    for ax, center, name in zip(axes.ravel(), centers, CLASSES, strict=True):
        lo, hi = np.percentile(center, [1, 99])
        ax.imshow(np.clip((center - lo) / max(hi - lo, 1e-6), 0, 1), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle("Centers of a pixel-space linear harmonic classifier")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "centers.png"), dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", help="image folders, their .tar.gz, or cifar-10-batches-py")
    p.add_argument(
        "--runs", default="ce,exact,sampled", help="comma list of ce, exact, sampled; or none"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=32, help="filters of the first stage")
    p.add_argument(
        "--distance", default="euclidean", choices=ht.ops.inputs.DISTANCES, help="CNN head's"
    )
    p.add_argument("--pixel-epochs", type=int, default=10)
    p.add_argument("--pixel-lr", type=float, default=1e-2)
    p.add_argument(
        "--eta",
        default=None,
        help="CNN head exponent: number, rule of D (sqrt, 2D, ...), learned or learned:START",
    )
    # The measured best for prototype-like pixel centers (README, "Prototypes"): a linear
    # classifier on raw pixels wants a gentle exponent, and the L2 penalty smooths its centers.
    p.add_argument("--pixel-eta", default="sqrt", help="pixel classifier's exponent, as --eta")
    p.add_argument("--pixel-l2", type=float, default=1e-3, help="L2 penalty on the pixel centers")
    p.add_argument("--limit", type=int, default=None, help="images per split (balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--out", default="runs/cifar10")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.pixel_epochs, args.width = 2, 2, 8
        args.limit = args.limit or 1000
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_cifar10(args.data_dir, args.limit)
    (x_train, _), (x_test, _) = data
    print(f"CIFAR-10: {len(x_train):,} train / {len(x_test):,} test images")
    kinds = [] if args.runs == "none" else args.runs.split(",")
    results = [train_run(kind, args, data) for kind in kinds]
    centers, pixel_acc, correlations = pixel_centers(args, data)
    os.makedirs(args.out, exist_ok=True)
    plot(results, centers, args.out)
    summary = {
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "config": vars(args),
        "runs": results,
        "pixel_linear_harmonic_test_accuracy": pixel_acc,
        "pixel_center_correlations": correlations,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nTest accuracy after {args.epochs} epochs (same CNN, budget and seed):")
    print("| run | test accuracy | test ECE | train seconds |\n|---|---|---|---|")
    for r in results:
        name = r["name"] if r["distance"] is None else f"{r['name']} ({r['distance']})"
        print(f"| {name} | {r['test_accuracy']:.4f} | {r['test_ece']:.4f} | {r['seconds']:.0f} |")
    print(f"| pixel-space linear harmonic | {pixel_acc:.4f} | |")
    print(
        "pixel centers vs class mean images: correlation "
        f"{np.mean(correlations):.3f} (min {np.min(correlations):.3f})"
    )
    print(f"\nwrote {args.out}/results.json, curves.png, centers.png")
    return summary


if __name__ == "__main__":
    main()
