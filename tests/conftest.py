import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

# The test models are tiny: one thread is fastest and keeps parallel test runs from thrashing.
torch.set_num_threads(1)
