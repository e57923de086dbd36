"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested, documented, on known metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import yaml
from catalogue import ROOT, unknown_metrics

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULES_TEST = RULES_DIR / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
# The alerts the operations issue asks for, by the rule that implements each.
REQUIRED = {
    "market paused": "OracledMarketPaused",
    "market unknown": "OracledMarketUnknown",
    "quorum near the minimum": "OracledQuorumNearMinimum",
    "source down": "OracledSourceDown",
    "all sources of a venue down": "OracledVenueDown",
    "round duration over budget": "OracledRoundOverBudget",
    "publish lag": "OracledPublishLag",
    "signer errors": "OracledSignerErrors",
    "signer skipping a steady share of rounds": "OracledSignerBusy",
    "audit write errors": "OracledAuditWriteErrors",
    "process restarts": "OracledRestarting",
    # Silent failures found by later reviews, which no other alert reports.
    "source up but quoting nothing": "OracledSourceNotQuoting",
    "most frames of a source malformed": "OracledSourceMalformedFrames",
    "instruments refused by a venue (the source stays up)": "OracledSourceInstrumentsRefused",
    "a source crashed and was restarted (a bug; it may stay mostly up)": "OracledSourceCrashed",
    "instruments a venue takes but never quotes (the source stays up)": (
        "OracledSourceInstrumentsSilent"
    ),
    "NATS bus down for minutes": "OracledNatsNotPublishing",
    "on-chain push stuck": "OracledPushStuck",
    "on-chain pusher stopped": "OracledPushDown",
    "on-chain pushes all failing while the pusher runs": "OracledPushFailing",
    "rounds dropped from the audit trail without a write error": "OracledAuditRoundsDropped",
    "consumers refused over the API's connection cap": "OracledApiConnectionLimit",
    "on-chain chain not read (its sources stay up)": "OracledChainNotRead",
    "every RPC URL of a chain held back by its provider's rate limit": "OracledChainRateLimited",
    "L2 sequencer down: every feed of the chain excluded in silence": "OracledSequencerDown",
    "Uniswap spot held away from its TWAP (the TWAP still votes)": "OracledUniswapSpotGap",
    "open file descriptors near the process limit": "OracledFileDescriptorsNearLimit",
    "a refused reload: a restart would refuse the file": "OracledConfigReloadRefused",
    "our clock behind the venues' (most sources see venue times ahead)": "OracledClockBehind",
    "stream consumers dropped as slow again and again": "OracledStreamConsumersDropped",
    "NATS server refusing our credentials or certificate": "OracledNatsRefused",
    "NATS server refusing our user a subject (messages lost, counted as published)": (
        "OracledNatsPermissionDenied"
    ),
    "the round loop running fewer rounds than its interval": "OracledRoundsStalled",
    "Prometheus cannot scrape the daemon": "OracledDown",
    "a perpetual's mark on its fallback": "OracledMarkFallback",
    "the audit trail's full-disk reserve given up": "OracledAuditReserveGivenUp",
    "operator pauses that a restart would lift (not written down)": "OracledManualPausesNotKept",
    "wrong admin tokens again and again (a token guessed, or a caller's stale one)": (
        "OracledAdminTokenRefused"
    ),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/ops-setup.sh (make install-test does)"
    return subprocess.run(
        [exe, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` parses every expression and template."""
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    """Synthetic series fire every rule when they should, with the expected labels and text."""
    done = promtool("test", "rules", RULES_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_has_a_firing_and_a_quiet_unit_test() -> None:
    """No rule goes untested: each has a case where it fires and one where it must not."""
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert sorted(names - fired) == []
    assert sorted(names - quiet) == []


def test_the_issue_alerts_all_exist() -> None:
    """Every alert the operations issue lists has its rule."""
    names = {rule["alert"] for rule in rules()}
    assert {k: v for k, v in REQUIRED.items() if v not in names} == {}


def _anchors() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_rule_has_severity_summary_and_a_runbook_section() -> None:
    """Severity is critical or warning; the description links a runbook section that exists."""
    anchors = _anchors()
    problems = []
    for rule in rules():
        name, notes = rule["alert"], rule.get("annotations", {})
        anchor = name.lower()
        if rule.get("labels", {}).get("severity") not in {"critical", "warning"}:
            problems.append(f"{name}: severity")
        if not notes.get("summary"):
            problems.append(f"{name}: summary")
        link = f"docs/runbook.md#{anchor}"
        if not notes.get("description", "").endswith(f"Runbook: {link}"):
            problems.append(f"{name}: description does not end with its runbook link")
        if notes.get("runbook_url") != link:
            problems.append(f"{name}: runbook_url")
        if anchor not in anchors:
            problems.append(f"{name}: no section {anchor!r} in docs/runbook.md")
    assert problems == []


def test_rules_use_only_catalogued_metrics() -> None:
    """A renamed metric cannot silently turn an alert off."""
    assert {
        r["alert"]: unknown_metrics(r["expr"]) for r in rules() if unknown_metrics(r["expr"])
    } == {}
