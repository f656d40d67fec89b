import os
import sys
from pathlib import Path

# prometheus_client opens its multiprocess files at import: the directory must exist first.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from persister.service import main  # noqa: E402

sys.exit(main())
