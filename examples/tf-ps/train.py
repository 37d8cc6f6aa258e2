"""Parameter-server training of y = 3x - 2 with tf.distribute.ParameterServerStrategy.

Every replica runs this file. Workers and parameter servers start a TensorFlow server and wait; the
chief is the coordinator: it schedules training steps on the workers, checks that it sees 2 workers and
1 PS and that every worker ran steps, and prints the learned weights.

Fault injection for tests (environment, inherited from `gantry run`):
  TF_PS_EXAMPLE_CRASH=worker:1:137  worker 1 exits with code 137 once training is under way, once
                                    (a marker file in TF_PS_EXAMPLE_STATE_DIR remembers it crashed)
  TF_PS_EXAMPLE_STATE_DIR=DIR       where the chief and the crashing replica leave marker files
  TF_PS_EXAMPLE_STEPS=N             training steps (default 300)
"""

import collections
import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

TRUE_W, TRUE_B = 3.0, -2.0
BATCH = 32
LEARNING_RATE = 0.2


def injected_crash(task_type, task_index):
    """Returns (exit code, state dir) if this replica must crash, else None."""
    spec = os.environ.get("TF_PS_EXAMPLE_CRASH", "")
    state_dir = os.environ.get("TF_PS_EXAMPLE_STATE_DIR", "")
    if not spec or not state_dir:
        return None
    kind, index, code = spec.split(":")
    if kind != task_type or int(index) != task_index:
        return None
    if os.path.exists(os.path.join(state_dir, "crashed")):
        return None  # once only
    return int(code), state_dir


def crash_when_training_started(code, state_dir):
    started = os.path.join(state_dir, "training-started")
    while not os.path.exists(started):
        time.sleep(0.05)
    with open(os.path.join(state_dir, "crashed"), "w") as f:
        f.write(str(code))
    print(f"injected failure: exiting with code {code}", flush=True)
    os._exit(code)


def serve(resolver, task_type, task_index):
    crash = injected_crash(task_type, task_index)
    if crash:
        threading.Thread(target=crash_when_training_started, args=crash, daemon=True).start()
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=task_type,
        task_index=task_index,
        protocol="grpc",
        start=True,
    )
    print(f"{task_type} {task_index} serving at {resolver.cluster_spec().task_address(task_type, task_index)}", flush=True)
    server.join()


def coordinate(resolver, cluster):
    workers, ps = len(cluster.get("worker", [])), len(cluster.get("ps", []))
    print(f"chief sees {workers} worker(s) and {ps} parameter server(s)", flush=True)
    steps = int(os.environ.get("TF_PS_EXAMPLE_STEPS", "300"))
    state_dir = os.environ.get("TF_PS_EXAMPLE_STATE_DIR", "")

    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        w = tf.Variable(0.0, name="w")
        b = tf.Variable(0.0, name="b")

    def dataset_fn():
        def batch(_):
            x = tf.random.uniform([BATCH], -1.0, 1.0)
            return x, TRUE_W * x + TRUE_B

        return tf.data.Dataset.range(1).repeat().map(batch)

    @tf.function
    def step(iterator):
        x, y = next(iterator)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(w * x + b - y))
        grad_w, grad_b = tape.gradient(loss, [w, b])
        w.assign_sub(LEARNING_RATE * grad_w)
        b.assign_sub(LEARNING_RATE * grad_b)
        return loss, tf.distribute.coordinator.experimental_get_current_worker_index()

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
    results = []
    first = min(40, steps)
    results += [coordinator.schedule(step, args=(iterator,)) for _ in range(first)]
    coordinator.join()
    if state_dir:
        open(os.path.join(state_dir, "training-started"), "w").close()
    results += [coordinator.schedule(step, args=(iterator,)) for _ in range(steps - first)]
    coordinator.join()

    per_worker = collections.Counter(int(r.fetch()[1]) for r in results)
    learned_w, learned_b = float(w.numpy()), float(b.numpy())
    report = {
        "w": learned_w,
        "b": learned_b,
        "true_w": TRUE_W,
        "true_b": TRUE_B,
        "steps": len(results),
        "steps_per_worker": {str(k): v for k, v in sorted(per_worker.items())},
        "workers": workers,
        "ps": ps,
    }
    print("RESULT " + json.dumps(report, sort_keys=True), flush=True)
    problems = []
    if workers != 2 or ps != 1:
        problems.append(f"expected 2 workers and 1 PS, saw {workers} and {ps}")
    missing = [i for i in range(workers) if per_worker.get(i, 0) == 0]
    if missing:
        problems.append(f"worker(s) {missing} ran no steps")
    if abs(learned_w - TRUE_W) > 1e-2 or abs(learned_b - TRUE_B) > 1e-2:
        problems.append(f"did not converge: w={learned_w:.4f} b={learned_b:.4f}")
    if problems:
        print("FAILED: " + "; ".join(problems), flush=True)
        sys.exit(1)
    print(f"learned y = {learned_w:.4f} x + {learned_b:.4f} (true: y = {TRUE_W} x + {TRUE_B})", flush=True)


def main():
    tf_config = json.loads(os.environ["TF_CONFIG"])
    task_type = tf_config["task"]["type"]
    task_index = int(tf_config["task"]["index"])
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if task_type in ("worker", "ps"):
        serve(resolver, task_type, task_index)
    elif task_type == "chief":
        coordinate(resolver, tf_config["cluster"])
    else:
        sys.exit(f"unexpected task type {task_type}")


if __name__ == "__main__":
    main()
