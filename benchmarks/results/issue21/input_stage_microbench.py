import sys, time, statistics, torch
sys.path.insert(0, "/work/wt-perf/benchmarks")
import common
from supercm.data.augment import Augment
from supercm.models import ImageInput
from supercm.data.images import field_transforms
torch.set_num_threads(int(sys.argv[1]))
S = int(sys.argv[2]) if len(sys.argv) > 2 else 28
aug_f, tr = field_transforms(S)
A_f, I_f = Augment.from_dict(aug_f), ImageInput(**tr)
A_m = Augment.from_dict({"crop_pad": 2})
xu = torch.randint(0, 256, (600, 3, S, S), dtype=torch.uint8)
xf = torch.rand(600, 3, S, S)
g = torch.Generator().manual_seed(0)
idx = torch.randperm(600)[:32]; idx2 = torch.randperm(600)[:32]
def folder():
    a = A_f(xu[idx], g); b = A_f(xu[idx2], g)
    return I_f(torch.cat([a, b]))
def memory():
    return torch.cat([A_m(xf[idx], g), A_m(xf[idx2], g)])
parts = {
 "u8->float": lambda: xu[idx].float().div_(255),
 "rrc": lambda: Augment(resized_crop=S)(xu[idx], g),
 "flip": lambda: Augment(flip=True)(xf[idx], g),
 "normalise": lambda: I_f(xf[:64]),
 "crop_pad2": lambda: A_m(xf[idx], g),
}
arms = {"folder": folder, "memory": memory, **parts}
blk = {k: common.calibrate_block(f, 0.05) for k, f in arms.items()}
t = common.interleaved_times(arms, reps=9, warmup=1, block=blk)
for k, v in t.items(): print(f"{k:10s} {statistics.median(v)*1e3:8.3f} ms")
print("folder/memory input stage", common.fmt_ratio(common.ratio_summary(t["folder"], t["memory"])))
