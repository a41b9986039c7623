"""Where the shared reference data lives (read-only, never copied into the repo)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("WBC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
