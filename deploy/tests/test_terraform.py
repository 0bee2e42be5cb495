#!/usr/bin/env python3
"""Renders deploy/terraform for examples/regions.tfvars and checks what it declares.

There is no AWS account here, so nothing is planned or applied. Instead the
configuration is parsed with python-hcl2 and the parts that matter are
evaluated in Python: the root module's `for_each` over `var.regions` (from
the tfvars), each module's `count`s, locals, variable defaults, and the
config templates (templatefile). The counts below are therefore the ones
the example would create, not numbers written into this test.

Run: python3 -m pytest deploy/tests/test_terraform.py   (or plain python3)
Needs: python-hcl2 (pip install python-hcl2).
"""

import json
import re
import sys
import tomllib
import unittest
from pathlib import Path

import hcl2

TF = Path(__file__).resolve().parents[1] / "terraform"
TFVARS = TF / "examples" / "regions.tfvars"


# ---- a small evaluator for the HCL expressions this configuration uses ------------


class Unsupported(Exception):
    """An expression outside the subset evaluated here: the test fails loudly."""


class Ref:
    """A reference to something only AWS knows (a resource attribute, a data source)."""

    def __init__(self, path):
        self.path = path

    def attr(self, name):
        return Ref(f"{self.path}.{name}")

    def index(self, i):
        return Ref(f"{self.path}[{json.dumps(i)}]")

    def __repr__(self):
        return f"Ref({self.path})"

    def __str__(self):
        return "${" + self.path + "}"


TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<op>==|!=|>=|<=|&&|\|\||=>|\.\.\.|[-+*/%<>?:.,()\[\]{}=!])|(?P<id>[A-Za-z_][A-Za-z0-9_-]*))"
)


def tokenize(src):
    pos, out = 0, []
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = TOKEN.match(src, pos)
        if not m:
            raise Unsupported(f"cannot tokenize at {src[pos:pos + 30]!r} in {src!r}")
        pos = m.end()
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
    return out


class Parser:
    """Pratt parser for: literals, references, indexing, calls, for-expressions,
    list literals, + - * comparisons, ternary. Produces closures over a scope."""

    def __init__(self, src, evaluator):
        self.toks = tokenize(src)
        self.i = 0
        self.ev = evaluator
        self.src = src

    def peek(self, k=0):
        return self.toks[self.i + k] if self.i + k < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise Unsupported(f"expected {value!r}, got {tok[1]!r} in {self.src!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise Unsupported(f"trailing {self.toks[self.i:]} in {self.src!r}")
        return node

    def expr(self):
        cond = self.binary(0)
        if self.peek()[1] == "?":
            self.take("?")
            a = self.expr()
            self.take(":")
            b = self.expr()
            return lambda s: a(s) if cond(s) else b(s)
        return cond

    PREC = {"||": 1, "&&": 2, "==": 3, "!=": 3, ">": 4, "<": 4, ">=": 4, "<=": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}

    def binary(self, min_prec):
        left = self.unary()
        while True:
            op = self.peek()[1]
            prec = self.PREC.get(op)
            if self.peek()[0] != "op" or prec is None or prec <= min_prec:
                return left
            self.take()
            right = self.binary(prec)
            left = self.apply(op, left, right)

    @staticmethod
    def apply(op, left, right):
        ops = {
            "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
            "/": lambda a, b: a / b, "%": lambda a, b: a % b, ">": lambda a, b: a > b,
            "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
            "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
            "&&": lambda a, b: a and b, "||": lambda a, b: a or b,
        }
        f = ops[op]
        return lambda s: f(left(s), right(s))

    def unary(self):
        if self.peek()[1] == "!":
            self.take()
            v = self.unary()
            return lambda s: not v(s)
        if self.peek()[1] == "-":
            self.take()
            v = self.unary()
            return lambda s: -v(s)
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            t = self.peek()[1]
            if t == ".":
                self.take()
                kind, name = self.take()
                if name == "*":
                    raise Unsupported("splat")
                node = (lambda n, name: lambda s: self.ev.getattr(n(s), name))(node, name)
            elif t == "[":
                self.take()
                if self.peek()[1] == "*":
                    self.take("*")
                    self.take("]")
                    if self.peek()[1] == ".":
                        self.take(".")
                        _, name = self.take()
                        node = (lambda n, name: lambda s: self.ev.splat(n(s), name))(node, name)
                        continue
                    raise Unsupported("bare splat")
                idx = self.expr()
                self.take("]")
                node = (lambda n, idx: lambda s: self.ev.index(n(s), idx(s)))(node, idx)
            else:
                return node

    def primary(self):
        kind, val = self.take()
        if kind == "num":
            v = float(val) if "." in val else int(val)
            return lambda s: v
        if kind == "str":
            raw = json.loads(val) if "${" not in val else val[1:-1]
            if "${" in val:
                return lambda s: self.ev.interpolate(raw, s)
            return lambda s: raw
        if val == "(":
            e = self.expr()
            self.take(")")
            return e
        if val == "[":
            if self.peek()[1] == "for":
                return self.for_expr()
            items = []
            while self.peek()[1] != "]":
                items.append(self.expr())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return lambda s: [f(s) for f in items]
        if val == "{":
            if self.peek()[1] == "for":
                return self.for_expr(close="}")
            items = []
            while self.peek()[1] != "}":
                kind, key = self.take()
                key = json.loads(key) if kind == "str" else key
                if self.peek()[1] not in ("=", ":"):
                    raise Unsupported(f"object key {key!r} in {self.src!r}")
                self.take()
                items.append((key, self.expr()))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
            return lambda s: {k: f(s) for k, f in items}
        if kind == "id":
            if val in ("true", "false"):
                return lambda s: val == "true"
            if val == "null":
                return lambda s: None
            if self.peek()[1] == "(":
                self.take("(")
                args = []
                while self.peek()[1] != ")":
                    args.append(self.expr())
                    if self.peek()[1] == ",":
                        self.take(",")
                self.take(")")
                return lambda s: self.ev.call(val, [a(s) for a in args], s)
            return lambda s: self.ev.lookup(val, s)
        raise Unsupported(f"unexpected {val!r} in {self.src!r}")

    def for_expr(self, close="]"):
        """[for v in C : body] and {for k, v in C : key => value [...]}."""
        self.take("for")
        _, first = self.take()
        second = None
        if self.peek()[1] == ",":
            self.take(",")
            _, second = self.take()
        self.take("in")
        coll = self.expr()
        self.take(":")
        key = None
        if close == "}":
            key = self.binary(0)
            self.take("=>")
        body = self.expr()
        group = False
        if self.peek()[1] == "...":
            self.take("...")
            group = True
        cond = None
        if self.peek()[1] == "if":
            self.take("if")
            cond = self.expr()
        self.take(close)

        def run(s):
            c = coll(s)
            pairs = list(c.items()) if isinstance(c, dict) else list(enumerate(c))
            out = {} if close == "}" else []
            for k, v in pairs:
                inner = dict(s)
                if second is None:
                    inner[first] = v
                else:
                    inner[first], inner[second] = k, v
                if cond is not None and not cond(inner):
                    continue
                if close == "]":
                    out.append(body(inner))
                elif group:
                    out.setdefault(key(inner), []).append(body(inner))
                else:
                    kk = key(inner)
                    if kk in out:
                        raise Unsupported(f"duplicate key {kk!r} (Terraform would fail)")
                    out[kk] = body(inner)
            return out

        return run


class Module:
    """One module instance: its parsed files, variable values and locals."""

    def __init__(self, folder, values, modules=None):
        self.folder = folder
        self.files = {}
        for f in sorted(folder.glob("*.tf")):
            self.files[f.name] = hcl2.load(f.open())
        self.blocks = {}
        for doc in self.files.values():
            for kind, entries in doc.items():
                self.blocks.setdefault(kind, []).extend(entries)
        self.var_defs = {}
        for entry in self.blocks.get("variable", []):
            for name, body in entry.items():
                self.var_defs[unquote(name)] = body
        self.vars = {}
        for name, body in self.var_defs.items():
            if name in values:
                self.vars[name] = with_optional_defaults(values[name], body.get("type", ""))
            elif "default" in body:
                self.vars[name] = self.eval(body["default"], {})
            else:
                self.vars[name] = Ref(f"var.{name} (no value)")
        self.local_src = {}
        for entry in self.blocks.get("locals", []):
            for k, v in entry.items():
                if not k.startswith("__"):
                    self.local_src[k] = v
        self.local_cache = {}
        self.modules = modules or {}

    # resources: [(type, name, body)]
    def resources(self, kind="resource"):
        out = []
        for entry in self.blocks.get(kind, []):
            for rtype, named in entry.items():
                for rname, body in named.items():
                    out.append((unquote(rtype), unquote(rname), body))
        return out

    def resource(self, rtype, rname):
        for t, n, b in self.resources():
            if (t, n) == (rtype, rname):
                return b
        raise KeyError(f"{rtype}.{rname} not in {self.folder}")

    def expand(self, rtype, rname):
        """[(scope, body)] for each instance the resource's count creates."""
        body = self.resource(rtype, rname)
        if "for_each" in body:
            raise Unsupported(f"for_each on {rtype}.{rname}")
        n = self.eval(body["count"], {}) if "count" in body else None
        if n is None:
            return [({}, body)]
        if not isinstance(n, int):
            raise Unsupported(f"{rtype}.{rname}: count {body['count']!r} is not known ({n!r})")
        return [({"count": {"index": i}}, body) for i in range(n)]

    # evaluation
    def eval(self, value, scope):
        if isinstance(value, bool) or isinstance(value, (int, float)) or value is None:
            return value
        if isinstance(value, list):
            return [self.eval(v, scope) for v in value]
        if isinstance(value, dict):
            return {k: self.eval(v, scope) for k, v in value.items() if not k.startswith("__")}
        if isinstance(value, str):
            if value.startswith("${") and value.endswith("}") and balanced(value[2:-1]):
                return Parser(value[2:-1], self).parse()(scope)
            if value.startswith('"') and value.endswith('"'):
                return self.interpolate(value[1:-1], scope)
            return value
        raise Unsupported(repr(value))

    def interpolate(self, raw, scope):
        if "%{" in raw:
            raise Unsupported("template directive")
        out, i = [], 0
        while True:
            j = raw.find("${", i)
            if j < 0:
                out.append(raw[i:])
                break
            out.append(raw[i:j])
            depth, k = 0, j + 2
            while True:
                c = raw[k]
                if c == "{":
                    depth += 1
                elif c == "}":
                    if depth == 0:
                        break
                    depth -= 1
                k += 1
            v = Parser(raw[j + 2:k], self).parse()(scope)
            out.append(str(v) if not isinstance(v, bool) else str(v).lower())
            i = k + 1
        return "".join(out).replace('\\"', '"')

    def lookup(self, name, scope):
        if name in scope:
            return scope[name]
        if name == "var":
            return self.vars
        if name == "local":
            return LocalView(self, scope)
        if name == "path":
            return {"module": str(self.folder)}
        if name == "module":
            return self.modules
        if name == "each":
            raise Unsupported("each outside for_each")
        return Ref(name)

    def local(self, name):
        if name not in self.local_cache:
            self.local_cache[name] = self.eval(self.local_src[name], {})
        return self.local_cache[name]

    def getattr(self, obj, name):
        if isinstance(obj, Ref):
            return obj.attr(name)
        if isinstance(obj, LocalView):
            return obj.get(name)
        if isinstance(obj, dict):
            if name not in obj:
                raise Unsupported(f"no attribute {name!r} in {sorted(obj)}")
            return obj[name]
        if isinstance(obj, ModuleOutputs):
            return obj.get(name)
        raise Unsupported(f".{name} of {obj!r}")

    def index(self, obj, i):
        if isinstance(obj, Ref):
            return obj.index(i)
        if isinstance(obj, (list, dict)):
            return obj[i]
        raise Unsupported(f"[{i!r}] of {obj!r}")

    def splat(self, obj, name):
        if isinstance(obj, Ref):
            return Ref(f"{obj.path}[*].{name}")
        raise Unsupported("splat of a value")

    def call(self, fn, args, scope):
        if fn == "range":
            return list(range(*args))
        if fn == "length":
            return len(args[0])
        if fn == "element":
            return args[0][args[1] % len(args[0])]
        if fn == "values":
            return list(args[0].values())
        if fn == "jsonencode":
            return json.dumps(args[0])
        if fn == "replace":
            if len(args[1]) > 1 and args[1].startswith("/") and args[1].endswith("/"):
                raise Unsupported("replace() with a regular expression")
            return args[0].replace(args[1], args[2])
        if fn == "join":
            return args[0].join(args[1])
        if fn == "distinct":
            out = []
            for x in args[0]:
                if x not in out:
                    out.append(x)
            return out
        if fn == "concat":
            return [x for a in args for x in a]
        if fn == "merge":
            out = {}
            for a in args:
                out.update(a)
            return out
        if fn == "templatefile":
            return render_template(Path(args[0]), args[1])
        raise Unsupported(f"function {fn}()")


class LocalView:
    def __init__(self, module, scope):
        self.module = module

    def get(self, name):
        return self.module.local(name)


class ModuleOutputs:
    def __init__(self, module):
        self.module = module

    def get(self, name):
        for entry in self.module.blocks.get("output", []):
            for oname, body in entry.items():
                if unquote(oname) == name:
                    return self.module.eval(body["value"], {})
        raise Unsupported(f"no output {name}")


def balanced(s):
    depth = 0
    for c in s:
        depth += c == "{"
        depth -= c == "}"
        if depth < 0:
            return False
    return depth == 0


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def with_optional_defaults(value, type_src):
    """Fills attributes left out of an object value from `optional(T, default)`."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for m in re.finditer(r"(\w+)\s*=\s*optional\(\s*\w+\s*,\s*(\"[^\"]*\"|[\d.]+)\s*\)", type_src):
        name, default = m.group(1), m.group(2)
        if name not in out:
            out[name] = json.loads(default)
    if type_src.startswith("${map(object("):
        return {k: with_optional_defaults(v, type_src[len("${map("):]) for k, v in value.items()}
    return out


def render_template(path, variables):
    """templatefile(): `${name}` and `${jsonencode(name)}` only; anything else fails."""
    text = path.read_text()

    def sub(m):
        expr = m.group(1).strip()
        j = re.fullmatch(r"jsonencode\((\w+)\)", expr)
        if j:
            return json.dumps(variables[j.group(1)])
        if re.fullmatch(r"\w+", expr):
            return str(variables[expr])
        raise Unsupported(f"template expression {expr!r} in {path.name}")

    if "%{" in text:
        raise Unsupported(f"template directive in {path.name}")
    return re.sub(r"(?<!\$)\$\{([^}]*)\}", sub, text).replace("$${", "${")


# ---- the rendered example -------------------------------------------------------------


def load_tfvars(path):
    raw = hcl2.load(path.open())
    return _plain(raw)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, str):
        if v.startswith("${"):
            raise Unsupported(f"expression in tfvars: {v}")
        return unquote(v)
    return v


class Rendered:
    def __init__(self):
        self.tfvars = load_tfvars(TFVARS)
        self.root = Module(TF, self.tfvars)
        modules = {}
        self.root.modules = modules
        # module "discovery" (no for_each) and module "region" (for_each)
        blocks = {}
        for entry in self.root.blocks["module"]:
            for name, body in entry.items():
                blocks[unquote(name)] = body
        self.module_blocks = blocks
        disc_args = self.module_args(blocks["discovery"], {})
        self.discovery = Module(TF / "modules" / "discovery", disc_args)
        modules["discovery"] = ModuleOutputs(self.discovery)
        reg = blocks["region"]
        each_over = self.root.eval(reg["for_each"], {})
        if not isinstance(each_over, dict):
            raise Unsupported("module region: for_each is not a map")
        self.regions = {}
        for key, value in each_over.items():
            args = self.module_args(reg, {"each": {"key": key, "value": value}})
            self.regions[key] = Module(TF / "modules" / "region", args)

    def module_args(self, block, scope):
        skip = {"source", "for_each", "count", "depends_on", "providers", "version"}
        return {k: self.root.eval(v, scope) for k, v in block.items() if k not in skip and not k.startswith("__")}


def block(body, name):
    """A nested block parsed by python-hcl2 (a list of one dict), or None."""
    v = body.get(name)
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return v[0]
    return None


class TerraformExample(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = Rendered()

    def all_instances(self, rtype, rname):
        out = []
        for key, m in self.r.regions.items():
            for scope, body in m.expand(rtype, rname):
                out.append((key, m, scope, body))
        return out

    def test_example_has_three_regions_of_two_servers(self):
        self.assertEqual(sorted(self.r.regions), ["ap", "eu", "us"])
        for key, m in self.r.regions.items():
            self.assertEqual(m.vars["servers"], 2, key)
            self.assertEqual(m.vars["name"], key)

    def test_one_healthz_check_per_server(self):
        checks = self.all_instances("aws_route53_health_check", "server")
        expected = sum(m.vars["servers"] for m in self.r.regions.values())
        self.assertEqual(len(checks), expected)
        self.assertEqual(expected, 6)
        fqdns = []
        for key, m, scope, body in checks:
            self.assertIn(m.eval(body["type"], scope), ("HTTP", "HTTPS"))
            self.assertEqual(m.eval(body["resource_path"], scope), "/healthz")
            self.assertEqual(m.eval(body["request_interval"], scope), 10)
            self.assertIn(m.eval(body["failure_threshold"], scope), (2, 3))
            self.assertEqual(m.eval(body["port"], scope), m.vars["client_port"])
            fqdns.append(m.eval(body["fqdn"], scope))
        self.assertEqual(len(set(fqdns)), expected, fqdns)

    def test_one_dns_name_per_server(self):
        records = self.all_instances("aws_route53_record", "server")
        names = []
        for key, m, scope, body in records:
            self.assertIn(m.eval(body["type"], scope), ("A", "AAAA", "CNAME"))
            ttl = m.eval(body["ttl"], scope)
            self.assertTrue(30 <= ttl <= 60, ttl)
            names.append(m.eval(body["name"], scope))
        want = sorted(f"{k}-{i}.example.com" for k in ("eu", "us", "ap") for i in (1, 2))
        self.assertEqual(sorted(names), want)
        # The health checks probe exactly these names.
        checked = sorted(m.eval(b["fqdn"], s) for _, m, s, b in self.all_instances("aws_route53_health_check", "server"))
        self.assertEqual(checked, want)

    def test_global_name_is_geoproximity_tied_to_health(self):
        seen = {}
        for key, m in self.r.regions.items():
            for scope, body in m.expand("aws_route53_record", "global"):
                name = m.eval(body["name"], scope)
                self.assertEqual(name, "api.example.com")
                policy = block(body, "geoproximity_routing_policy") or block(body, "latency_routing_policy")
                self.assertIsNotNone(policy, f"{key}: global record without geoproximity/latency routing")
                where = m.eval(policy.get("aws_region", policy.get("region")), scope)
                self.assertEqual(where, self.r.tfvars["regions"][key]["aws_region"])
                hc = m.eval(body.get("health_check_id"), scope)
                self.assertIsInstance(hc, Ref, f"{key}: global record without health_check_id")
                self.assertTrue(hc.path.startswith("aws_route53_health_check."), hc)
                ttl = m.eval(body["ttl"], scope)
                self.assertTrue(30 <= ttl <= 60, ttl)
                seen[key] = m.eval(body["set_identifier"], scope)
        self.assertEqual(sorted(seen), ["ap", "eu", "us"])
        self.assertEqual(len(set(seen.values())), 3)

    def test_region_health_follows_its_servers(self):
        for key, m in self.r.regions.items():
            (scope, body), = m.expand("aws_route53_health_check", "region")
            self.assertEqual(m.eval(body["type"], scope), "CALCULATED")
            self.assertEqual(m.eval(body["child_health_threshold"], scope), 1)
            self.assertEqual(str(m.eval(body["child_healthchecks"], scope)), "${aws_route53_health_check.server[*].id}")
            # <region>.<domain>: one multivalue record per server, each on its own check.
            recs = m.expand("aws_route53_record", "region")
            self.assertEqual(len(recs), m.vars["servers"])
            for s, b in recs:
                self.assertEqual(m.eval(b["name"], s), f"{key}.example.com")
                self.assertEqual(str(m.eval(b["health_check_id"], s)),
                                 f"${{aws_route53_health_check.server[{s['count']['index']}].id}}")

    def test_only_the_client_port_is_public(self):
        for key, m in self.r.regions.items():
            (scope, sg), = m.expand("aws_security_group", "server")
            admin = m.vars["admin_port"]
            client = m.vars["client_port"]
            self.assertNotEqual(admin, client)
            rules = [(m.eval(r["from_port"], scope), m.eval(r["to_port"], scope),
                      m.eval(r.get("cidr_blocks", []), scope) + m.eval(r.get("ipv6_cidr_blocks", []), scope))
                     for r in sg["ingress"]]
            covering_admin = [r for r in rules if r[0] <= admin <= r[1]]
            self.assertTrue(covering_admin, f"{key}: no rule for the admin port (Prometheus)")
            for lo, hi, cidrs in covering_admin:
                self.assertFalse({"0.0.0.0/0", "::/0"} & set(cidrs), f"{key}: admin port {admin} open to the world")
            # Prometheus reaches it: the region's VPC and the monitoring CIDRs.
            want = {self.r.tfvars["regions"][key]["vpc_cidr"], *self.r.tfvars["monitoring_cidrs"]}
            self.assertEqual({c for r in covering_admin for c in r[2]}, want)
            for lo, hi, cidrs in rules:
                if {"0.0.0.0/0", "::/0"} & set(cidrs):
                    self.assertEqual((lo, hi), (client, client), f"{key}: public rule on {lo}-{hi}")
        for name in ("discovery", "etcd"):
            (scope, sg), = self.r.discovery.expand("aws_security_group", name)
            for rule in sg["ingress"]:
                cidrs = self.r.discovery.eval(rule.get("cidr_blocks", []), scope)
                self.assertFalse({"0.0.0.0/0", "::/0"} & set(cidrs), f"{name}: public ingress {cidrs}")

    def test_discovery_tier(self):
        d = self.r.discovery
        self.assertEqual(len(d.expand("aws_instance", "etcd")), 3)
        self.assertEqual(len(d.expand("aws_route53_record", "etcd")), 3)
        self.assertEqual(len(d.expand("aws_instance", "discovery")), 2)
        for rname in ("etcd", "discovery"):
            for scope, body in d.expand("aws_instance", rname):
                self.assertNotIn("associate_public_ip_address", body, f"{rname} must stay private")
                subnet = d.eval(body["subnet_id"], scope)
                self.assertIn(subnet, self.r.tfvars["discovery"]["private_subnet_ids"])
        # The discovery nodes' config: etcd store, every member, tether's prefix.
        (scope, param), = d.expand("aws_ssm_parameter", "discovery_config")
        conf = tomllib.loads(d.eval(param["value"], scope))
        self.assertEqual(conf["store"]["kind"], "etcd")
        self.assertEqual(conf["store"]["prefix"], "/tether/")
        self.assertEqual(conf["store"]["endpoints"],
                         [f"http://etcd-{i}.tether.internal:2379" for i in (1, 2, 3)])
        self.assertNotIn("token", json.dumps(conf["store"]))
        self.assertEqual(conf["discovery"]["cluster_token_file"], "secrets/cluster.token")

    def test_proxy_configs_name_their_server_and_every_discovery_node(self):
        want_urls = [f"http://discovery-{i}.tether.internal:7070" for i in (1, 2)]
        seen = []
        for key, m in self.r.regions.items():
            for scope, param in m.expand("aws_ssm_parameter", "proxy_config"):
                self.assertEqual(m.eval(param["type"], scope), "SecureString")
                conf = tomllib.loads(m.eval(param["value"], scope))
                sid = conf["server"]["id"]
                seen.append(sid)
                self.assertEqual(conf["server"]["region"], key)
                self.assertEqual(conf["server"]["public_url"], f"https://{sid}.example.com")
                self.assertTrue(conf["server"]["listen"].endswith(f":{m.vars['client_port']}"))
                self.assertTrue(conf["server"]["admin_listen"].endswith(f":{m.vars['admin_port']}"))
                self.assertEqual(conf["discovery"]["urls"], want_urls)
                self.assertNotIn("url", conf["discovery"])
                # Secrets are files fetched at boot, never values in the config.
                for k in ("cluster_token", "secret_hex", "private_key_hex", "cluster_token_env"):
                    self.assertNotIn(f'"{k}":', json.dumps(conf))
                self.assertEqual(conf["discovery"]["cluster_token_file"], "secrets/cluster.token")
                self.assertEqual(conf["tokens"]["keyring_file"], "secrets/keyring.toml")
        self.assertEqual(sorted(seen), sorted(f"{k}-{i}" for k in ("eu", "us", "ap") for i in (1, 2)))

    def test_user_data_fetches_secrets_and_holds_none(self):
        for key, m in self.r.regions.items():
            for scope, body in m.expand("aws_instance", "server"):
                ud = m.eval(body["user_data"], scope)
                self.assertIn("aws secretsmanager get-secret-value", ud)
                self.assertIn("aws ssm get-parameter --with-decryption", ud)
                self.assertIn("tether/keyring", ud)
                self.assertIn(f'AWS_REGION="{self.r.tfvars["regions"][key]["aws_region"]}"', ud)
                self.assertIn("systemctl enable --now tether-proxy.service", ud)
                md = block(body, "metadata_options")
                self.assertEqual(m.eval(md["http_tokens"], scope), "required")

    def test_no_secret_values_in_terraform(self):
        for f in sorted(TF.rglob("*.tf")):
            text = f.read_text()
            for word in ("secret_string", "aws_secretsmanager_secret_version", "secret_binary"):
                self.assertNotIn(word, text, f"{f}: secrets must not pass through Terraform")

    def test_ttl_validation_bounds(self):
        body = self.r.regions["eu"].var_defs["dns_ttl"]
        cond = block(body, "validation")["condition"]
        self.assertIn("30", cond)
        self.assertIn("60", cond)


def render_configs(out_dir):
    """Writes the example's rendered configs (<server-id>.toml per proxy,
    discovery.toml) into out_dir, for `tether check` (scripts/check-deploy.sh)."""
    r = Rendered()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, m in r.regions.items():
        for scope, param in m.expand("aws_ssm_parameter", "proxy_config"):
            text = m.eval(param["value"], scope)
            sid = tomllib.loads(text)["server"]["id"]
            (out / f"{sid}.toml").write_text(text)
            written.append(f"{sid}.toml")
    (scope, param), = r.discovery.expand("aws_ssm_parameter", "discovery_config")
    (out / "discovery.toml").write_text(r.discovery.eval(param["value"], scope))
    written.append("discovery.toml")
    # The boot scripts (user-data) of every instance, for shellcheck.
    (out / "user-data").mkdir(exist_ok=True)
    instances = [(m, f"server-{key}", "server") for key, m in r.regions.items()]
    instances += [(r.discovery, "etcd", "etcd"), (r.discovery, "discovery", "discovery")]
    for m, prefix, rname in instances:
        for scope, body in m.expand("aws_instance", rname):
            name = f"user-data/{prefix}-{scope['count']['index'] + 1}.sh"
            (out / name).write_text(m.eval(body["user_data"], scope))
            written.append(name)
    return written


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        print("\n".join(render_configs(sys.argv[2])))
        sys.exit(0)
    unittest.main(verbosity=2)
