import os

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Two cores are shared by every process on this machine: keep tests single-threaded.
torch.set_num_threads(1)
