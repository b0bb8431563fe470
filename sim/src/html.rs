//! A self-contained HTML timeline of one run: hosts as lanes, requests as bars coloured by
//! outcome, faults and timeline steps as bands, policy decisions and violations as marks. No
//! external resources: the data is inlined as JSON and drawn by a small script.

use serde_json::json;

use crate::Report;
use crate::scenario::Outcome;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page for `report`.
pub fn timeline(report: &Report) -> String {
    let out = &report.output;
    let mut lanes: Vec<String> = vec!["sim".into(), "istiod.istio-system.svc".into()];
    lanes.extend(out.nodes.iter().cloned());
    let requests: Vec<_> = out
        .requests
        .iter()
        .map(|r| {
            json!({
                "lane": r.source_node,
                "start": r.started.as_millis() as u64,
                "end": r.finished.as_millis() as u64,
                "conn": r.conn,
                "outcome": r.outcome.to_string(),
                "ok": r.outcome == Outcome::Succeed,
            })
        })
        .collect();
    let steps: Vec<_> = out
        .timeline
        .iter()
        .map(|(at, what, fault)| json!({"at": at.as_millis() as u64, "what": what, "fault": fault}))
        .collect();
    let decisions: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.decision.is_some())
        .take(5000)
        .map(|e| {
            json!({
                "lane": e.host,
                "at": e.at.as_millis() as u64,
                "what": e.decision,
                "conn": e.conn,
                "deny": e.decision.as_deref().is_some_and(|d| !d.starts_with("allowed")),
            })
        })
        .collect();
    let violation = out.violation.as_ref().map(
        |v| json!({"at": v.at.as_millis() as u64, "what": format!("{}: {}", v.invariant, v.event)}),
    );
    let data = json!({
        "lanes": lanes,
        "end": out.sim_time.as_millis() as u64,
        "requests": requests,
        "steps": steps,
        "decisions": decisions,
        "violation": violation,
    });
    // `</` cannot appear inside the inline JSON and end the script early.
    let data = data.to_string().replace("</", "<\\/");
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>sim: {title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; }}
#chart {{ position: relative; border-top: 1px solid #ccc; }}
.lane {{ position: relative; height: 28px; border-bottom: 1px solid #eee; }}
.label {{ position: absolute; left: 0; width: 170px; top: 6px; overflow: hidden; white-space: nowrap; color: #333; }}
.track {{ position: absolute; left: 180px; right: 0; top: 0; bottom: 0; }}
.req {{ position: absolute; height: 8px; top: 4px; min-width: 2px; border-radius: 2px; opacity: .8; }}
.ok {{ background: #2a9d4b; }} .bad {{ background: #d1495b; }}
.dec {{ position: absolute; top: 16px; width: 3px; height: 9px; }}
.allow {{ background: #3a6ea5; }} .deny {{ background: #e07a1f; }}
.step {{ position: absolute; top: 0; bottom: 0; width: 2px; background: #888; opacity: .6; }}
.fault {{ background: #b00020; }}
.violation {{ position: absolute; top: 0; bottom: 0; width: 3px; background: #000; }}
#tip {{ position: fixed; background: #222; color: #fff; padding: 4px 6px; border-radius: 3px; pointer-events: none; display: none; max-width: 600px; }}
ul {{ padding-left: 18px; }}
</style></head><body>
<h2>{title}</h2>
<p>{line}</p>
<p>Lanes are hosts (the driver, istiod, every node). Bars are requests on their source node
(green: succeeded, red: did not); small marks are policy decisions (blue: allowed, orange:
denied); vertical lines are timeline steps (red: faults); a black line is the violation.</p>
<div id="chart"></div>
<h3>Timeline</h3><ul id="steps"></ul>
<div id="tip"></div>
<script>
const data = {data};
const chart = document.getElementById('chart');
const tip = document.getElementById('tip');
const end = Math.max(data.end, 1);
const pct = t => (100 * t / end) + '%';
function hover(el, text) {{
  el.onmousemove = e => {{ tip.style.display = 'block'; tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px'; tip.textContent = text; }};
  el.onmouseleave = () => {{ tip.style.display = 'none'; }};
}}
const tracks = {{}};
for (const lane of data.lanes) {{
  const row = document.createElement('div'); row.className = 'lane';
  const label = document.createElement('div'); label.className = 'label'; label.textContent = lane;
  const track = document.createElement('div'); track.className = 'track';
  row.append(label, track); chart.append(row); tracks[lane] = track;
}}
for (const r of data.requests) {{
  const t = tracks[r.lane] || tracks['sim'];
  const el = document.createElement('div'); el.className = 'req ' + (r.ok ? 'ok' : 'bad');
  el.style.left = pct(r.start); el.style.width = pct(Math.max(r.end - r.start, 1));
  hover(el, `${{r.conn}}: ${{r.outcome}} (${{r.start}}ms → ${{r.end}}ms)`); t.append(el);
}}
for (const d of data.decisions) {{
  const t = tracks[d.lane] || tracks['sim'];
  const el = document.createElement('div'); el.className = 'dec ' + (d.deny ? 'deny' : 'allow');
  el.style.left = pct(d.at); hover(el, `${{d.at}}ms ${{d.conn || ''}} ${{d.what}}`); t.append(el);
}}
const list = document.getElementById('steps');
for (const s of data.steps) {{
  for (const lane of data.lanes) {{
    const el = document.createElement('div'); el.className = 'step' + (s.fault ? ' fault' : '');
    el.style.left = pct(s.at); hover(el, `${{s.at}}ms ${{s.what}}`); tracks[lane].append(el);
  }}
  const li = document.createElement('li'); li.textContent = `${{s.at}}ms ${{s.what}}`; list.append(li);
}}
if (data.violation) {{
  for (const lane of data.lanes) {{
    const el = document.createElement('div'); el.className = 'violation';
    el.style.left = pct(data.violation.at); hover(el, data.violation.what); tracks[lane].append(el);
  }}
  const li = document.createElement('li'); li.textContent = `${{data.violation.at}}ms VIOLATION ${{data.violation.what}}`; list.append(li);
}}
</script></body></html>
"#,
        title = escape(&format!("{} (seed {})", report.scenario, report.seed)),
        line = escape(&report.line()),
    )
}
