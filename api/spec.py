"""Write the OpenAPI document generated from the code to docs/openapi.json.

Regenerate after changing a route or model: ``.venv/bin/python -m api.spec``
(tests/api/test_ops.py fails while the committed copy is out of step)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common.config import load_settings

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def render() -> str:
    from api import create_app

    app = create_app({"SETTINGS": load_settings({})})   # defaults only: the spec must not depend on .env
    return json.dumps(app.api_doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    COMMITTED.write_text(render())
    print(f"wrote {COMMITTED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
