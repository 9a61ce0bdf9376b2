"""One guaranteed bound of one zoo model at the defaults, cache off, one thread: its mean pairwise L_ij, guarantee,
seconds and the recursion at the estimates, appended as a JSON line (the numbers of tests/golden/bounds.json).

    python bench/bound_once.py 6c2f /tmp/bounds.jsonl after            # this checkout
    PYTHONPATH=/tmp/old python bench/bound_once.py 6c2f /tmp/bounds.jsonl before   # another checkout (dcf624f)
"""
import json, sys, time, torch, lipzoo
torch.set_num_threads(1)
from lipzoo.bounds import lipschitz_bound
name, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
if name in lipzoo.list_pretrained():
    m = lipzoo.load(name); shape = tuple(m.lipzoo_config["input_shape"])
else:
    m = lipzoo.create_model(name); shape = tuple(m.input_shape)
m.eval()
t = time.perf_counter()
b = lipschitz_bound(m, shape, cache=False, progress=False)
dt = time.perf_counter() - t
off = ~torch.eye(b.value.shape[0], dtype=bool)
rec = {"model": name, "code": kind, "mean": float(b.value[off].mean()), "guarantee": b.guarantee, "seconds": dt,
       "at_estimates": float(b.liplt_at_estimates[off].mean()), "lipzoo": lipzoo.__file__}
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
print(rec)
