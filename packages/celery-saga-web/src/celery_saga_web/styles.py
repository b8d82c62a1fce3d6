"""``/static/web.css``: the page layout, with status colours from core's one colour table.

The badges of the list and the step table take their colours from
`celery_saga.graphs.colours`, the table the graph and timeline SVGs use, so a status
looks the same in every picture and every table.
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response

from celery_saga.graphs.colours import COLOURS, NEUTRAL

_LAYOUT = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: #1f2328; background: #fff; }
header.top { background: #24292f; color: #fff; padding: 10px 24px; display: flex; gap: 24px;
  align-items: center; }
header.top a { color: #fff; text-decoration: none; font-weight: 600; }
header.top .mode { margin-left: auto; font-size: 12px; opacity: .8; }
main { padding: 16px 24px 48px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: #0969da; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #d0d7de; padding: 6px 8px; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.id a { white-space: nowrap; }
td.id, code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
td.error, .wrap { white-space: pre-wrap; overflow-wrap: anywhere; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 8px;
  margin: 2px 0; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 320px;
  overflow: auto; font-size: 12px; }
pre.error { background: #fff5f5; border-color: #ffcecb; }
.status { display: inline-block; border: 1px solid; border-radius: 12px; padding: 0 8px;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end;
  margin-bottom: 12px; }
form.filters label, form.action label { display: flex; flex-direction: column;
  font-size: 12px; gap: 2px; }
input, select, textarea, button { font: inherit; padding: 3px 6px; }
button { cursor: pointer; }
.pager { margin: 12px 0; display: flex; gap: 16px; }
.notice { background: #ddf4ff; border: 1px solid #54aeff; border-radius: 6px;
  padding: 8px 12px; margin: 8px 0; }
.problem { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px;
  padding: 8px 12px; margin: 8px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px;
  margin: 0 0 8px; }
dl.facts dt { color: #57606a; }
dl.facts dd { margin: 0; }
dl.facts.summary { grid-template-columns: max-content minmax(0, 1fr) max-content minmax(0, 1fr)
  max-content minmax(0, 1fr); }
.pictures { display: flex; flex-wrap: wrap; gap: 0 16px; align-items: flex-start; }
.pictures .grow { flex: 1 1 480px; min-width: 0; }
.picture { overflow-x: auto; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px;
  background: #fff; }
.picture svg { max-width: 100%; height: auto; }
.actions { display: flex; flex-wrap: wrap; gap: 12px; }
form.action { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px;
  display: flex; gap: 8px; align-items: end; flex-wrap: wrap; }
.muted { color: #57606a; }
.nowrap { white-space: nowrap; }
.small { font-size: 12px; }
"""


@functools.lru_cache(maxsize=1)
def css() -> str:
    """The stylesheet: layout, then one ``.status-<name>`` rule per entry of the colour table."""
    rules = [_LAYOUT.strip()]
    for name, colour in sorted(COLOURS.items()):
        rules.append(
            f".status-{name} {{ background: {colour.fill}; border-color: {colour.stroke}; "
            f"color: {colour.text}; }}"
        )
    rules.append(
        f".status-unknown {{ background: {NEUTRAL.fill}; border-color: {NEUTRAL.stroke}; "
        f"color: {NEUTRAL.text}; }}"
    )
    return "\n".join(rules) + "\n"


def stylesheet(request: Request) -> Response:
    """Serve the stylesheet (cacheable for an hour: it changes only with the package)."""
    return Response(css(), media_type="text/css", headers={"cache-control": "public, max-age=3600"})
