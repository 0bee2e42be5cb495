#!/usr/bin/env python3
"""Every metric the Grafana dashboard and the alert rules use is one the code exports.

Reads the metric names registered in the Rust sources (prometheus crate:
`Opts::new("name"`, `HistogramOpts::new("name"`, `IntGauge::new("name"`, ...,
with the registry's namespace from `Registry::new_custom(Some("ns")` of the
same crate), then extracts every metric name from the PromQL of
deploy/grafana/tether.json (panel targets and `label_values(...)` template
queries) and deploy/prometheus/alerts.yml, and fails naming each metric the
code does not export, and each PromQL function this checker does not know
(so a typo such as `rat(` is not taken for a metric).

Usage: python3 deploy/tests/check_dashboard.py [repo root]
Needs PyYAML only for alerts.yml; without it the rule file is read with a
small line parser that handles `expr:` scalars and `|` blocks.
"""

import json
import re
import sys
from pathlib import Path

# Crate folders whose sources register metrics.
CRATES = ("proxy", "discovery", "src", "protocol", "client", "sampleapp")

CONSTRUCTOR = re.compile(
    r"\b(Opts|HistogramOpts|IntGauge|IntCounter|Gauge|Counter|Histogram|IntGaugeVec|"
    r"IntCounterVec|GaugeVec|CounterVec|HistogramVec)::new\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
MACRO = re.compile(r"\b(register_[a-z_]+|opts|histogram_opts)!\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
NAMESPACE = re.compile(r"new_custom\(\s*Some\(\s*\"([a-zA-Z_][a-zA-Z0-9_]*)\"")

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta",
    "deriv", "exp", "floor", "group", "histogram_quantile", "holt_winters", "idelta",
    "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "max",
    "max_over_time", "min", "min_over_time", "predict_linear", "quantile",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sqrt", "stddev", "stddev_over_time", "stdvar", "sum", "sum_over_time", "time",
    "timestamp", "topk", "vector", "last_over_time", "present_over_time",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}


def exported_metrics(root: Path) -> set:
    names = set()
    for crate in CRATES:
        files = sorted((root / crate).rglob("*.rs")) if (root / crate).is_dir() else []
        # Test modules (`#[cfg(test)]` to the end of the file, the usual
        # layout) register throw-away metrics; they do not count.
        texts = [f.read_text(encoding="utf-8", errors="replace").split("#[cfg(test)]")[0] for f in files]
        spaces = {m.group(1) for t in texts for m in NAMESPACE.finditer(t)}
        if len(spaces) > 1:
            raise SystemExit(f"{crate}: several registry namespaces {sorted(spaces)}; teach this checker which applies where")
        ns = next(iter(spaces), None)
        for text in texts:
            found = [(m.group(1), m.group(2)) for m in CONSTRUCTOR.finditer(text)]
            found += [("Histogram" if "histogram" in m.group(1) else "", m.group(2)) for m in MACRO.finditer(text)]
            for kind, name in found:
                if ns and not name.startswith("tether_"):
                    name = f"{ns}_{name}"
                if kind.startswith("Histogram"):
                    names.update({name + "_bucket", name + "_sum", name + "_count"})
                else:
                    names.add(name)
    return names


def metric_names(expr: str, where: str, errors: list) -> set:
    """Metric names in one PromQL expression (Grafana variables allowed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    e = re.sub(r"\{[^{}]*\}", "", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges / subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", " 0 ", e)  # $server, ${__rate_interval}
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b|\b\d+[smhdwy]\b", " 0 ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            if tok not in PROMQL_FUNCTIONS:
                errors.append(f"{where}: unknown PromQL function {tok!r} in: {expr.strip()}")
            continue
        if tok.lower() in KEYWORDS:
            continue
        names.add(tok)
    return names


def dashboard_exprs(path: Path):
    dash = json.loads(path.read_text(encoding="utf-8"))
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{path.name}: panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q)
            out.append((f"{path.name}: variable {v.get('name')!r}", m.group(1) if m else q))
    return out


def alert_exprs(path: Path):
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # type: ignore
    except ImportError:
        yaml = None
    out = []
    if yaml is not None:
        doc = yaml.safe_load(text)
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                name = r.get("alert") or r.get("record")
                out.append((f"{path.name}: {name}", r["expr"]))
        return out
    lines = text.splitlines()
    i = 0
    name = "?"
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-\s*(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, val = len(m.group(1)), m.group(2)
            if val.strip() in ("|", ">", "|-", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i])
                    i += 1
                out.append((f"{path.name}: {name}", "\n".join(block)))
                continue
            out.append((f"{path.name}: {name}", val))
        i += 1
    return out


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    exported = exported_metrics(root)
    if not exported:
        print("no metrics found in the Rust sources: is the root right?", file=sys.stderr)
        return 1
    exprs = dashboard_exprs(root / "deploy/grafana/tether.json") + alert_exprs(root / "deploy/prometheus/alerts.yml")
    errors = []
    used = {}
    for where, expr in exprs:
        for name in metric_names(expr, where, errors):
            used.setdefault(name, []).append(where)
            if name not in exported:
                errors.append(f"{where}: {name} is not exported by the code")
    if not exprs or not used:
        errors.append("no PromQL found in the dashboard or the alert rules")
    print(f"{len(exported)} series exported by the code, {len(exprs)} PromQL expressions, "
          f"{len(used)} distinct metrics used")
    unused = sorted(exported - set(used))
    if unused:
        print("exported but not used on the dashboard or in alerts: " + ", ".join(unused))
    for e in errors:
        print("ERROR " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
