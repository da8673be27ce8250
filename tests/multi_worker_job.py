"""One worker of the two-process ``MultiWorkerMirroredStrategy`` test (not collected by pytest).

    python tests/multi_worker_job.py PORT0,PORT1 INDEX exact|sampled OUT_DIR

Trains a Dense body and a ``HarmonicLMHead`` with a custom loop (the package's loss inside
``strategy.run``, a Keras optimizer), then writes ``OUT_DIR/worker<INDEX>.npz``: the per-step
losses and weight checksums, the final weights, the weights restored from the chief's checkpoint,
and the sampled loss of one fixed batch under this worker's own seed (twice).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(seed: int = 0):
    """Body, head and optimizer with the same initial weights in every process."""
    import keras

    import harmonic_tf as ht

    keras.utils.set_random_seed(seed)
    body = keras.layers.Dense(8, name="body")
    head = ht.HarmonicLMHead(50, eta=16.0, name="head")
    body.build((None, 6))
    head.build((None, 8))
    optimizer = keras.optimizers.Adam(1e-2)
    variables = body.trainable_variables + head.trainable_variables
    optimizer.build(variables)
    return body, head, optimizer, variables


def data(steps: int = 8, global_batch: int = 32):
    import numpy as np

    rng = np.random.default_rng(0)
    n = steps * global_batch
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (np.argmax(x @ rng.normal(size=(6, 50)), 1)).astype("int32")
    return x, y, global_batch


def replica_seed(base, ctx):
    """``[base, replica id]`` folded: every replica draws its own negatives from one seed."""
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(
        base, ctx.replica_id_in_sync_group, alg="philox"
    )


def main(ports: str, index: int, kind: str, out_dir: str) -> None:
    workers = [f"localhost:{p}" for p in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    )
    import numpy as np
    import tensorflow as tf

    ring = tf.distribute.experimental.CommunicationImplementation.RING
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=ring)
    )
    with strategy.scope():
        model = build()
    losses, checksums, own_negatives = train(strategy, model, kind)
    final = [v.numpy() for v in model[3]]
    restored = restore_from_chief(strategy, model, index, out_dir)
    np.savez(
        os.path.join(out_dir, f"worker{index}.npz"),
        losses=np.array(losses),
        checksums=np.array(checksums),
        own_negatives=np.array(own_negatives),
        **{f"final{i}": v for i, v in enumerate(final)},
        **{f"restored{i}": v.numpy() for i, v in enumerate(restored)},
    )


def train(strategy, model, kind: str):
    """Per-step losses and weight checksums of the custom loop, and the sampled loss of one
    fixed batch under this worker's own seed (twice)."""
    import tensorflow as tf

    import harmonic_tf as ht

    body, head, optimizer, variables = model
    x, y, global_batch = data()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch).with_options(options)
    sampled = ht.SampledOptions(k=8, center_rows=8)

    def replica_loss(xb, yb, seed):
        hidden = body(xb)
        if kind == "exact":
            return ht.harmonic_loss(hidden, head.centers, yb, eta=head.resolved_eta())
        return ht.sampled_harmonic_loss(
            hidden, head.centers, yb, sampled, eta=head.resolved_eta(), seed=seed
        )

    @tf.function
    def train_step(xb, yb):
        def replica(xb, yb):
            ctx = tf.distribute.get_replica_context()
            base = tf.stack([tf.constant(7, tf.int64), tf.cast(optimizer.iterations, tf.int64)])
            with tf.GradientTape() as tape:
                loss = replica_loss(xb, yb, replica_seed(base, ctx))
                # Gradients are summed across replicas: scale to the global batch's mean.
                scaled = loss / ctx.num_replicas_in_sync
            optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables, strict=True))
            return loss

        return strategy.reduce("MEAN", strategy.run(replica, args=(xb, yb)), axis=None)

    losses, checksums = [], []
    for xb, yb in strategy.experimental_distribute_dataset(dataset):
        losses.append(float(train_step(xb, yb)))
        checksums.append([float(tf.reduce_sum(tf.abs(v))) for v in variables])

    @tf.function
    def fixed_batch_loss():
        def replica():
            ctx = tf.distribute.get_replica_context()
            seed = replica_seed(tf.constant([99, 0], tf.int64), ctx)
            return ht.sampled_harmonic_loss(
                body(tf.constant(x[:16])), head.centers, tf.constant(y[:16]), sampled, seed=seed
            )

        return strategy.experimental_local_results(strategy.run(replica))[0]

    return losses, checksums, [float(fixed_batch_loss()), float(fixed_batch_loss())]


def restore_from_chief(strategy, model, index: int, out_dir: str) -> list:
    """The variables of a fresh model restored from the chief's checkpoint of ``model``."""
    import tensorflow as tf

    body, head, optimizer, _ = model
    # The chief writes the checkpoint others restore from; the other worker writes its own
    # copy to a scratch folder (every worker must take part in a save under this strategy).
    checkpoint = tf.train.Checkpoint(body=body, head=head, optimizer=optimizer)
    chief_dir = os.path.join(out_dir, "ckpt")
    path = checkpoint.save(chief_dir if index == 0 else os.path.join(out_dir, f"scratch{index}"))
    # A collective after the save: no worker reads the chief's files before they are written.
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    chief_path = path if index == 0 else path.replace(f"scratch{index}", "ckpt")
    with strategy.scope():
        fresh_body, fresh_head, fresh_optimizer, fresh_variables = build(seed=1)
    restore = tf.train.Checkpoint(body=fresh_body, head=fresh_head, optimizer=fresh_optimizer)
    restore.restore(chief_path).assert_existing_objects_matched()
    return fresh_variables


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
