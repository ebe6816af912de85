//! The report in four formats: text for people (a verdict line, a table,
//! then the evidence of every check that did not pass), and JSON, JUnit XML
//! and SARIF 2.1.0 for machines, each with the full evidence.

use std::io::Write;
use std::time::SystemTime;

use anstyle::{AnsiColor, Style};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::{Value, json};

use super::check::Check;
use super::finding::Outcome;
use super::profile::GROUPS;
use super::{Outcomes, Report};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Junit,
    Sarif,
}

const TOOL: &str = "deepseek-audit verify";
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// "FAIL: 2 of 20 checks failed, 1 error; 15 passed, 2 not applicable".
pub(crate) fn verdict(report: &Report) -> String {
    let counts = report.counts();
    let total = report.results.len();
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(o, n)| format!("{n} {}", o.as_str()))
        .collect();
    format!(
        "{}: {total} checks: {}",
        if report.passed() { "PASS" } else { "FAIL" },
        parts.join(", ")
    )
}

fn style(outcome: Outcome) -> Style {
    let colour = match outcome {
        Outcome::Pass => AnsiColor::Green,
        Outcome::Fail => AnsiColor::Red,
        Outcome::Error => AnsiColor::Magenta,
        Outcome::NotApplicable | Outcome::NotChecked | Outcome::NotSelected => AnsiColor::Yellow,
    };
    Style::new().fg_color(Some(colour.into())).bold()
}

/// The text report; `colour` only when writing to a terminal.
pub(crate) fn text(report: &Report, colour: bool) -> String {
    let paint = |outcome: Outcome, text: &str| {
        if colour {
            format!(
                "{}{text}{}",
                style(outcome).render(),
                style(outcome).render_reset()
            )
        } else {
            text.to_owned()
        }
    };
    let mut out = String::new();
    let overall = if report.passed() {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    out.push_str(&paint(overall, &verdict(report)));
    out.push_str(&format!(
        "\n{TOOL} {VERSION} on {} at {}, profile {}{}\n\n",
        report.host,
        rfc3339(report.started),
        report.profile.display(),
        if report.root { "" } else { ", not root" }
    ));
    let width = report
        .results
        .iter()
        .map(|r| r.check.id.len())
        .max()
        .unwrap_or(0);
    out.push_str(&format!("{:<width$}  {:<13}  SUMMARY\n", "CHECK", "RESULT"));
    for r in &report.results {
        let result = format!("{:<13}", r.finding.result.as_str());
        out.push_str(&format!(
            "{:<width$}  {}  {}\n",
            r.check.id,
            paint(r.finding.result, &result),
            r.finding.summary
        ));
    }
    let attention: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.finding.result, Outcome::Fail | Outcome::Error))
        .collect();
    for r in attention {
        out.push_str(&format!(
            "\n{} {}: {}\n",
            paint(r.finding.result, r.finding.result.as_str()),
            r.check.id,
            r.check.title,
        ));
        for line in evidence_text(r).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let needing_root = report.needing_root();
    if !needing_root.is_empty() {
        out.push_str(&format!(
            "\nNot checked without root: {}. Run `deepseek-audit verify` as root for these.\n",
            needing_root.join(", ")
        ));
    }
    out
}

fn references(check: &Check) -> String {
    check
        .references
        .iter()
        .map(|r| format!("NIST SP 800-53 {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_json(check: &Check) -> Value {
    json!({
        "id": check.id,
        "group": check.group(),
        "title": check.title,
        "rationale": check.rationale,
        "remediation": check.remediation,
        "references": check.references.iter().map(|r| format!("NIST SP 800-53 {r}")).collect::<Vec<_>>(),
    })
}

/// `verify --list --format json`: the catalog.
pub(crate) fn catalog_json(catalog: &[&Check]) -> String {
    let checks: Vec<Value> = catalog.iter().map(|c| check_json(c)).collect();
    serde_json::to_string_pretty(&checks).unwrap_or_default()
}

/// `verify --list`: the catalog as a table.
pub(crate) fn catalog_text(catalog: &[&Check]) -> String {
    let width = catalog.iter().map(|c| c.id.len()).max().unwrap_or(0);
    catalog
        .iter()
        .map(|c| {
            format!(
                "{:<width$}  {}  [{}]\n",
                c.id,
                c.title,
                c.references.join(", ")
            )
        })
        .collect()
}

/// The JSON report.
pub(crate) fn json(report: &Report) -> String {
    let counts: serde_json::Map<String, Value> = report
        .counts()
        .iter()
        .map(|(o, n)| (o.as_str().to_owned(), json!(n)))
        .collect();
    let checks: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            let mut value = check_json(r.check);
            value["result"] = json!(r.finding.result);
            value["summary"] = json!(r.finding.summary);
            value["evidence"] = json!(r.finding.evidence);
            value
        })
        .collect();
    let value = json!({
        "tool": TOOL,
        "version": VERSION,
        "host": report.host,
        "started": rfc3339(report.started),
        "finished": rfc3339(report.finished),
        "profile": report.profile,
        "root": report.root,
        "verdict": if report.passed() { "pass" } else { "fail" },
        "exit_code": report.exit_code(),
        "summary": counts,
        "not_checked_without_root": report.needing_root(),
        "checks": checks,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn evidence_text(r: &Outcomes) -> String {
    let mut text = format!("{}\n", r.finding.summary);
    for e in &r.finding.evidence {
        text.push_str(&format!(
            "- {}\n    observed: {}\n    expected: {}\n",
            e.source, e.observed, e.expected
        ));
    }
    text.push_str(&format!(
        "remediation: {}\nreferences: {}\n",
        r.check.remediation,
        references(r.check)
    ));
    text
}

/// JUnit XML (the Jenkins xunit schema): one suite per group, one test
/// case per check; fail is a failure, error an error, notapplicable and
/// notchecked are skipped. The evidence goes in the message body and
/// `system-out`.
pub(crate) fn junit(report: &Report) -> Result<String, quick_xml::Error> {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let count = |results: &[&Outcomes], outcomes: &[Outcome]| {
        results
            .iter()
            .filter(|r| outcomes.contains(&r.finding.result))
            .count()
            .to_string()
    };
    let all: Vec<&Outcomes> = report.results.iter().collect();
    let mut root = BytesStart::new("testsuites");
    root.push_attribute(("name", TOOL));
    root.push_attribute(("tests", all.len().to_string().as_str()));
    root.push_attribute(("failures", count(&all, &[Outcome::Fail]).as_str()));
    root.push_attribute(("errors", count(&all, &[Outcome::Error]).as_str()));
    writer.write_event(Event::Start(root))?;
    for group in GROUPS {
        let results: Vec<&Outcomes> = all
            .iter()
            .copied()
            .filter(|r| r.check.group() == group)
            .collect();
        let mut suite = BytesStart::new("testsuite");
        suite.push_attribute(("name", group));
        suite.push_attribute(("tests", results.len().to_string().as_str()));
        suite.push_attribute(("failures", count(&results, &[Outcome::Fail]).as_str()));
        suite.push_attribute(("errors", count(&results, &[Outcome::Error]).as_str()));
        suite.push_attribute((
            "skipped",
            count(
                &results,
                &[
                    Outcome::NotApplicable,
                    Outcome::NotChecked,
                    Outcome::NotSelected,
                ],
            )
            .as_str(),
        ));
        suite.push_attribute(("timestamp", rfc3339(report.started).as_str()));
        suite.push_attribute(("hostname", report.host.as_str()));
        writer.write_event(Event::Start(suite))?;
        writer.write_event(Event::Start(BytesStart::new("properties")))?;
        for (name, value) in [
            ("profile", report.profile.display().to_string()),
            ("tool", format!("{TOOL} {VERSION}")),
            ("root", report.root.to_string()),
        ] {
            let mut property = BytesStart::new("property");
            property.push_attribute(("name", name));
            property.push_attribute(("value", value.as_str()));
            writer.write_event(Event::Empty(property))?;
        }
        writer.write_event(Event::End(BytesEnd::new("properties")))?;
        for r in results {
            let mut case = BytesStart::new("testcase");
            case.push_attribute(("classname", format!("deepseek-audit.{group}").as_str()));
            case.push_attribute((
                "name",
                format!("{}: {}", r.check.id, r.check.title).as_str(),
            ));
            writer.write_event(Event::Start(case))?;
            let evidence = evidence_text(r);
            let tag = match r.finding.result {
                Outcome::Pass => None,
                Outcome::Fail => Some("failure"),
                Outcome::Error => Some("error"),
                Outcome::NotApplicable | Outcome::NotChecked | Outcome::NotSelected => {
                    Some("skipped")
                }
            };
            if let Some(tag) = tag {
                let mut element = BytesStart::new(tag);
                element.push_attribute(("message", r.finding.summary.as_str()));
                element.push_attribute(("type", r.finding.result.as_str()));
                writer.write_event(Event::Start(element))?;
                writer.write_event(Event::Text(BytesText::new(&evidence)))?;
                writer.write_event(Event::End(BytesEnd::new(tag)))?;
            }
            writer.write_event(Event::Start(BytesStart::new("system-out")))?;
            writer.write_event(Event::Text(BytesText::new(&evidence)))?;
            writer.write_event(Event::End(BytesEnd::new("system-out")))?;
            writer.write_event(Event::End(BytesEnd::new("testcase")))?;
        }
        writer.write_event(Event::End(BytesEnd::new("testsuite")))?;
    }
    writer.write_event(Event::End(BytesEnd::new("testsuites")))?;
    let mut bytes = writer.into_inner();
    let _ = writeln!(bytes);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// SARIF 2.1.0: every check is a rule, every result a result with its
/// `kind` (`pass`, `fail`, `notApplicable`, or `open` when it could not be
/// decided); only failures carry `level: error`, as the spec requires. The
/// XCCDF result and the evidence are in the result's property bag.
pub(crate) fn sarif(report: &Report) -> String {
    let rules: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            let c = r.check;
            json!({
                "id": c.id,
                "name": c.id.replace('-', ""),
                "shortDescription": {"text": c.title},
                "fullDescription": {"text": c.rationale},
                "help": {"text": c.remediation},
                "properties": {"tags": c.references.iter().map(|r| format!("NIST-SP-800-53:{r}")).collect::<Vec<_>>(), "group": c.group()},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .results
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let (kind, level) = match r.finding.result {
                Outcome::Pass => ("pass", "none"),
                Outcome::Fail => ("fail", "error"),
                Outcome::NotApplicable => ("notApplicable", "none"),
                Outcome::Error | Outcome::NotChecked => ("open", "none"),
                Outcome::NotSelected => ("informational", "none"),
            };
            json!({
                "ruleId": r.check.id,
                "ruleIndex": index,
                "kind": kind,
                "level": level,
                "message": {"text": r.finding.summary},
                "properties": {"xccdfResult": r.finding.result, "evidence": r.finding.evidence},
            })
        })
        .collect();
    let value = json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "deepseek-audit",
                "fullName": TOOL,
                "version": VERSION,
                "semanticVersion": VERSION,
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": true,
                "startTimeUtc": rfc3339(report.started),
                "endTimeUtc": rfc3339(report.finished),
                "machine": report.host,
                "properties": {"profile": report.profile, "root": report.root},
            }],
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
