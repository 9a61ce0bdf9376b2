"""Fine-tune through timm: a certified MNIST model, re-headed for 3 classes, trained with CRM."""

import os
import tempfile
from pathlib import Path

import timm  # with lipzoo installed, importing timm registers the lipzoo_* models with it
import timm.data
import torch
from torch.utils.data import DataLoader, Subset

import lipzoo
from lipzoo.certify import evaluate
from lipzoo.data import load_dataset

TINY = os.environ.get("LIPZOO_TUTORIAL_TINY") == "1"  # the tests run every tutorial on tiny settings
WORK = Path(os.environ.get("LIPZOO_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="lipzoo-tutorial-"))
STEPS = 3 if TINY else 200
NUM_EVAL = 100 if TINY else 1000
BOUND_OPTIONS = {"effort": "none", "max_dense": 64} if TINY else {}  # proved either way; see tutorial 1
torch.manual_seed(0)

# 1. The zoo as timm models: architecture `lipzoo_<arch>`, pretrained tag = the zoo entry.
print(timm.list_pretrained("lipzoo_4c3f*"))
model = timm.create_model("lipzoo_4c3f.crm_mnist", pretrained=True, num_classes=3)
print(f"{type(model).__name__}: {model.num_classes} classes; parent {model.metadata.parent.name!r}")
# The model normalizes its own input (its first layer is Normalize): a timm pipeline feeds raw
# pixels in [0, 1], which is what the pretrained_cfg's mean 0 / std 1 say.
config = timm.data.resolve_data_config({}, model=model)
print(f"timm data config: input {config['input_size']}, mean {config['mean']}, std {config['std']}")

# 2. The data: digits 0, 1 and 2 from the MNIST test split that ships with lipzoo, its first half
#    to fine-tune on and its second half to evaluate on. With your own data, use its splits.
test = load_dataset("mnist", split="test")
labels = test.labels
train_idx = [i for i in range(5000) if labels[i] < 3]
eval_idx = [i for i in range(5000, 10000) if labels[i] < 3][:NUM_EVAL]
loader = DataLoader(Subset(test, train_idx), batch_size=64, shuffle=True)

# 3. Train with CRM: the loss needs the pairwise Lipschitz bound as a differentiable function of
#    the weights, which LipLTEstimator gives (power iterations, warm-started across steps: an
#    estimate, fine for training; certification below uses a guaranteed bound).
estimator = lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=5)
criterion = lipzoo.CRMLoss(t=5.0, lam=30.0, r0=2.2)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
model.train()
step = 0
while step < STEPS:
    for x, y in loader:
        loss = criterion(model(x), y, estimator())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step == STEPS:
            break
print(f"{STEPS} steps, last loss {loss.item():.3f}")

# 4. Certify the held-out images with a guaranteed bound of the fine-tuned weights, in float64.
model.eval()
model64 = model.double()
bound = lipzoo.lipschitz_bound(model64, (1, 28, 28), **BOUND_OPTIONS)
result = evaluate(model64, DataLoader(Subset(test, eval_idx), batch_size=100), bound, ["1.58"],
                  arithmetic=torch.float64, progress=False)
print(f"held-out: clean {result['summary']['clean']:.3f}, "
      f"certified@1.58 {result['summary']['certified@1.58']:.3f} ({result['kind']}, {bound.guarantee})")

# 5. Save it. The checkpoint names its parent and carries no numbers until `lipzoo certify
#    <folder> --data ... --attach` measures them on these weights.
folder = WORK / "mnist-012"
model.float().save_pretrained(folder)
saved = lipzoo.load(folder).metadata
print(f"saved {folder}: parent {saved.parent.name!r}, results {saved.results}")
