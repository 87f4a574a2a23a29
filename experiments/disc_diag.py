"""The ADIM / ADIB / NGAN discriminator alone: CE-pretrain teacher and student, then run only
the recipe's own discriminator steps (tau held at tau_start unless given) and print D's accuracy
per source on the training images (eval mode) and the mean max probability of each source's
label vectors after every pass.

    python experiments/disc_diag.py adim 20 12 tau_start=10.0 tau_end=10.0
    (method, pretraining epochs, D passes, then config KEY=VALUE pairs)
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from adkernels import train as T
from adkernels.train.data import load_split
from adkernels.train.loop import Context, Dist, accuracy
from adkernels.train.recipes import RECIPE_CLASSES

torch.set_num_threads(1)
method = sys.argv[1]; pre = int(sys.argv[2]); dpasses = int(sys.argv[3])
extra = dict(kv.split("=", 1) for kv in sys.argv[4:])
T._load_plugins()
cfg = T.make_config(T.get_recipe(method).config_cls, {"data": "mnist", "n_train": 100, "n_test": 1000, "batch_size": 10,
                    "seed": 0, "recipe": method, "pretrain_epochs": pre, "epochs": 5, **extra})
torch.manual_seed(0)
data = load_split("mnist", 100, 1000, 0)
r = RECIPE_CLASSES[method](cfg, data, torch.device("cpu"), Dist())
ctx = Context(cfg, 1000, 0); ctx.global_step = 0  # tau = tau_start
def run_pass(phase):
    perm = torch.randperm(100)
    for i in range(0, 100, 10):
        idx = perm[i:i+10]; x, y = data.x_train[idx], data.y_train[idx]
        loss, on, _ = r.step(phase, x, y, ctx)
        opt = r.optimizers[on]; opt.zero_grad(); loss.backward()
        if phase == "disc":
            gn = sum(p.grad.norm()**2 for p in r.disc.parameters() if p.grad is not None) ** .5
        opt.step()
    return float(loss.detach()), (float(gn) if phase == "disc" else None)
t0 = time.time()
for e in range(pre):
    for ph in r.passes(e): run_pass(ph)
print("pretrain done", round(time.time()-t0), "s  student", accuracy(r.student, data.x_test, data.y_test),
      "teacher", accuracy(r.models["teacher"], data.x_test, data.y_test) if "teacher" in r.models else None, flush=True)
@torch.no_grad()
def d_eval():
    x, y = data.x_train, data.y_train
    was = r.disc.training; r.disc.eval()
    real = F.one_hot(y, 10).float()
    srcs = {"real": real, "student": r.label_vector(r.student(x), ctx)}
    if r.has_teacher: srcs["teacher"] = r.label_vector(r.teacher(x), ctx)
    out = {}
    for k, v in srcs.items():
        s = r.disc(x, v)
        if r.three_way:
            pred = s.argmax(1); tgt = list(srcs).index(k)
            out[k] = round(float((pred == tgt).float().mean()), 2)
        else:
            p = torch.sigmoid(s[:, 0]); out[k] = round(float(((p > .5) == (k == "real")).float().mean()), 2)
        out[k + "_maxp"] = round(float(v.max(1).values.mean()), 3)
    r.disc.train(was)
    return out
print("tau", r.tau(ctx) if cfg.gumbel else None, "before D:", d_eval(), flush=True)
for p in range(dpasses):
    l, gn = run_pass("disc")
    print(f"D pass {p}: loss {l:.3f} gradnorm {gn:.3g}", d_eval(), flush=True)
