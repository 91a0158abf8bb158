import configparser
from pathlib import Path


def test_dvc_uses_the_offline_plots_template(repo: Path) -> None:
    config = configparser.ConfigParser()
    config.read(repo / ".dvc" / "config")
    template = repo / ".dvc" / config["plots"]["html_template"]
    html = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in html  # where DVC puts the plots
    assert "{scripts}" not in html  # where DVC would put its CDN <script src=...> tags
    assert "<script src=" not in html
    for marker in ("vega-5.20.2", "vega-lite-5.2.0", "vega-embed-6.18.2"):
        assert marker in html
    assert "vegaEmbed" in html
