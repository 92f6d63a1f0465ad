"""Helpers for the search tests: a tiny CNN written as a file.py:factory model spec."""

from __future__ import annotations

from pathlib import Path

TINY_CNN = '''
import torch
import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.b2 = nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1, stride=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Tiny()
'''


def write_tiny_cnn(folder: Path) -> str:
    """Write the tiny CNN's file into `folder`; return its 'file.py:build' spec."""
    path = Path(folder) / "tiny_cnn.py"
    path.write_text(TINY_CNN)
    return f"{path}:build"


def write_eval(folder: Path, body: str, name: str = "evalfile.py") -> str:
    """An eval file whose `evaluate(artifact)` runs `body` (numpy as np, time imported)."""
    path = Path(folder) / name
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    path.write_text(f"import time\nimport numpy as np\n\n\ndef evaluate(artifact):\n{indented}\n")
    return f"{path}:evaluate"
