"""Read a model card: what a checkpoint says about itself, and whose weights its numbers belong to."""

from importlib.resources import files

import lipzoo
from lipzoo.models import get_metadata

# 1. Every zoo entry with weights, and its metadata, without loading any weights.
for name in lipzoo.list_pretrained():
    meta = get_metadata(name)
    res = meta.results
    cells = ", ".join(f"{res.at(e).certified:.2%} certified at {e.text}" for e in meta.eps
                      if res.at(e).certified is not None)
    print(f"{name:<22} {meta.dataset:<8} clean {res.clean:.2%}, {cells}")

# 2. One model, loaded: model.metadata is the parsed config.json (a frozen lipzoo.Metadata).
model = lipzoo.load("crm-mnist-4c3f")
meta = model.metadata
print(f"\n{meta.name}: {meta.architecture}, model_args {dict(meta.arch.model_args)}")
print(f"  data: {meta.dataset}, {meta.num_classes} classes, input {meta.input_shape}")
# eps is an exact fraction, in pixel units (l2): "36/255" stays 36/255, never 0.14117647...
print(f"  eps: {[f'{e.text} (= {e.value})' for e in meta.eps]}")
recipe = meta.recipe
print(f"  recipe: {recipe.loss}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
      f"CRM t={recipe.crm.t} lam={recipe.crm.lam} r0={recipe.crm.r0}")

# 3. The measured numbers, and the sha256 of the weights they were measured on. lipzoo keeps
#    numbers only beside those very weights: a copy with other weights (fine-tuned, re-headed)
#    names this checkpoint as its parent and shows no numbers until it is certified itself.
res = meta.results
assert res.sha256 == meta.sha256
eps = meta.eps[0]
print(f"  measured on sha256 {res.sha256[:12]}... over {res.num_test_samples} test images "
      f"({res.arithmetic} arithmetic, {res.epochs_trained} epochs trained)")
print(f"  clean {res.clean:.2%}, certified {res.at(eps).certified:.2%}, PGD {res.at(eps).pgd:.2%} at {eps.text} "
      f"(PGD: {res.attack['steps']} steps)")
print(f"  bound: {res.bound['method']} {res.bound['mode']}, guarantee {res.bound['guarantee']!r}, "
      f"mean L_ij {res.bound['pairwise_mean']:.3f}")

# 4. The card itself: README.md beside model.safetensors and config.json, rendered from config.json.
#    The zoo entry says where its shipped weights live in the package (weights.local); a Hub download
#    or a `lipzoo train` run is such a folder too.
entry = get_metadata("crm-mnist-4c3f")
card = (files("lipzoo") / entry.weights.local / "README.md").read_text(encoding="utf-8")
start = card.index("## Results")
print("\n" + card[start:card.index("\n## ", start + 1)].strip())

# 5. A re-headed copy: the parent is named, the parent's numbers are gone.
tuned = lipzoo.create_model("crm-mnist-4c3f", pretrained=True, num_classes=3)
print(f"\nre-headed for 3 classes: parent {tuned.metadata.parent.name!r}, results {tuned.metadata.results}")
