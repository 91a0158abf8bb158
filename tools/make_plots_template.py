"""Build the offline HTML template for `dvc plots show/diff` (.dvc/plots_offline.html).

DVC's default page loads Vega from a CDN, which renders nothing offline. This inlines
the same releases DVC's renderer targets (vega 5.20.2, vega-lite 5.2.0, vega-embed
6.18.2; BSD-3-Clause) into the template. Regenerate with `make plots-template`, which
fetches them with `npm pack` from the npm registry.

    python tools/make_plots_template.py DIR_WITH_UNPACKED_TARBALLS
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGES = {
    "vega": "vega-5.20.2/package/build/vega.min.js",
    "vega-lite": "vega-lite-5.2.0/package/build/vega-lite.min.js",
    "vega-embed": "vega-embed-6.18.2/package/build/vega-embed.min.js",
}
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots_offline.html"


def build(root: Path) -> str:
    scripts = []
    for rel in PACKAGES.values():
        js = (root / rel).read_text(encoding="utf-8")
        if "</script" in js or "{plot_divs}" in js:
            raise SystemExit(f"{rel}: cannot be inlined safely")
        scripts.append(f"<!-- {rel.split('/')[0]} (BSD-3-Clause) -->\n<script>{js}</script>")
    # No {scripts} placeholder: it is where DVC would insert its CDN <script> tags.
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC plots</title>\n'
        + "\n".join(scripts)
        + "\n<style>table { border-spacing: 15px; } body { font-family: sans-serif; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


if __name__ == "__main__":
    OUT.write_text(build(Path(sys.argv[1])), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")
