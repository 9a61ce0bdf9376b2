"""Train on your own data: write a small .npz, train a 4C3F on it with CRM, certify and attach."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

import lipzoo
from lipzoo.cli import main as lipzoo_cli
from lipzoo.train import TrainOptions, resolve_config, train

TINY = os.environ.get("LIPZOO_TUTORIAL_TINY") == "1"  # the tests run every tutorial on tiny settings
WORK = Path(os.environ.get("LIPZOO_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="lipzoo-tutorial-"))
PER_CLASS = (32, 10) if TINY else (1000, 200)  # training / test images per class
EPOCHS = 1 if TINY else 10

# 1. Your data, in the Keras layout: x_train, y_train, x_test, y_test; uint8 images N x H x W
#    (grayscale), N x H x W x C or N x C x H x W; labels 0..K-1. Here: three classes of 12 x 12
#    grayscale images (a bright row, a bright column or a bright diagonal, in noise).
rng = np.random.default_rng(0)


def make_split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            image = rng.integers(0, 80, (12, 12))
            k = rng.integers(2, 10)
            if label == 0:
                image[k, :] = 255
            elif label == 1:
                image[:, k] = 255
            else:
                image[np.arange(12), np.arange(12)] = 255
            images.append(image)
            labels.append(label)
    order = rng.permutation(len(labels))
    return np.stack(images).astype(np.uint8)[order], np.array(labels, dtype=np.int64)[order]


x_train, y_train = make_split(PER_CLASS[0])
x_test, y_test = make_split(PER_CLASS[1])
data = WORK / "bars.npz"
np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
print(f"wrote {data}: {len(y_train)} training / {len(y_test)} test images of 12x12, 3 classes")

# 2. The recipe of a zoo entry, resolved for your data: the class count, the input shape and the
#    Normalize statistics come from the data (no --init: the architecture is built for 12 x 12).
#    Overrides are the `key=value` of the command line: a short schedule (cross-entropy for the
#    first fifth, the learning rate decaying over the second half), and the radius the model is
#    certified at (certify.eps) with CRM's cut-off r0 above it.
config = resolve_config("crm-mnist-4c3f", [
    f"recipe.epochs={EPOCHS}", f"recipe.crm.warmup_epochs={EPOCHS // 5}", f"recipe.scheduler.start_epoch={EPOCHS // 2}",
    "recipe.batch_size=32", "recipe.crm.r0=0.7", 'certify.eps=["0.5"]',
], data=str(data))
print(f"model: {config['architecture']} {config['model_args']}, {config['num_classes']} classes")

# 3. Train. The same from a shell:
#    lipzoo train crm-mnist-4c3f recipe.epochs=10 recipe.crm.warmup_epochs=2 ... --data bars.npz --out runs/bars
options = TrainOptions(out_dir=str(WORK / "runs" / "bars"), data=str(data), device="cpu", progress=False,
                       max_steps_per_epoch=3 if TINY else None)
run = train(config, options)
last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
print(f"trained {last['epoch']} epoch(s); validation: " +
      ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("val_")))

# 4. Certify the test split with the guaranteed bound, and attach the numbers to the checkpoint
#    (its config.json and model card). The command line, called from Python:
#    lipzoo certify runs/bars/final --data bars.npz --attach
final = run / "final"
assert lipzoo_cli(["certify", str(final), "--data", str(data), "--attack-steps", "5",
                   "--out", str(WORK / "certify-bars"), "--attach", "--no-progress", "--device", "cpu"]) == 0

# 5. The checkpoint now carries numbers measured on its own weights (checked by sha256).
meta = lipzoo.load(final).metadata
at = meta.results.at("0.5")
print(f"card: clean {meta.results.clean:.3f}, certified@0.5 {at.certified:.3f}, "
      f"weights sha256 {meta.sha256[:12]}...")
