//! A self-contained HTML timeline of one run, for investigating it: a time axis in simulated
//! seconds; fault windows (partitions, crashes, istiod outages, link latency and loss) shaded
//! from their step to the step that ended them; timeline steps and the violation; one lane per
//! host with its requests (bars coloured by outcome) and policy decisions (marks, allow or
//! deny); a legend; and a detail panel that opens any mark's event: a decision with its
//! explanation (the deciding policy and rule, or the default rule), a request with its source,
//! destination, outcome, status and timing.
//!
//! No external resources: the data is inlined as one JSON document in
//! `<script type="application/json" id="timeline-data">` and drawn by a small script. The page
//! is a function of the run alone (no wall clock), so the same seed gives the same bytes.

mod axis;
mod data;
mod faults;

use crate::Report;

/// The `id` of the `<script type="application/json">` element holding the page's data.
pub const DATA_ELEMENT_ID: &str = "timeline-data";

const STYLE: &str = include_str!("html/timeline.css");
const SCRIPT: &str = include_str!("html/timeline.js");

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON that can sit inside a `<script>` element: `<`, `>` and `&` occur only inside JSON
/// strings, where their `\u` escapes mean the same, so no `</script>` or `<!--` can appear.
fn inline_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The colour of every legend key, and a switch per key that hides its marks.
fn colour_rules() -> String {
    let mut css = String::new();
    for e in data::LEGEND {
        css.push_str(&format!(
            ".k-{key} {{ background: {colour}; }}\n#chart.hide-{key} .k-{key} {{ display: none; }}\n",
            key = e.key,
            colour = e.colour
        ));
    }
    css
}

/// The legend: every colour on the page, grouped, each a switch for its marks.
fn legend() -> String {
    let mut html = String::from("<section id=\"legend\" aria-label=\"legend\">\n");
    let mut groups: Vec<&str> = Vec::new();
    for e in data::LEGEND {
        if !groups.contains(&e.group) {
            groups.push(e.group);
        }
    }
    for group in groups {
        html.push_str(&format!(
            "<div class=\"group\"><h3>{}</h3>\n",
            escape(group)
        ));
        for e in data::LEGEND.iter().filter(|e| e.group == group) {
            // Faults are drawn faint (shading), and so is their swatch.
            let faint = if e.key.starts_with("fault-") {
                " faint"
            } else {
                ""
            };
            html.push_str(&format!(
                "<label data-legend=\"{key}\"><input type=\"checkbox\" checked data-toggle=\"{key}\"><i class=\"sw{faint} k-{key}\"></i>{label}</label>\n",
                key = e.key,
                label = escape(e.label)
            ));
        }
        html.push_str("</div>\n");
    }
    html.push_str("</section>\n");
    html
}

/// The page for `report`.
pub fn timeline(report: &Report) -> String {
    let data = data::build(report);
    let json = serde_json::to_string(&data).expect("the timeline's data is plain JSON");
    let title = format!("{} (seed {})", report.scenario, report.seed);
    let mut page = String::new();
    page.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>sim: {}</title>\n",
        escape(&title)
    ));
    page.push_str("<style>\n");
    page.push_str(STYLE);
    page.push_str(&colour_rules());
    page.push_str("</style></head><body>\n");
    page.push_str(&format!(
        "<header><h1>{} <small>seed {}</small></h1>\n<p id=\"summary\" class=\"verdict-{}\">{}</p>\n",
        escape(&report.scenario),
        report.seed,
        data.verdict,
        escape(&data.summary)
    ));
    page.push_str(
        "<p class=\"help\">Time runs left to right in simulated seconds. The faults row shows \
         each fault from its step to the step that ended it (or the end of the run), and shades \
         the lanes of the hosts it hit. Each host has a lane: requests are bars on their source \
         node, policy decisions are marks on the host that decided. Click any mark (or a line \
         in the lists below) for its event; a decision shows the policy and rule that made it. \
         Legend entries switch their marks on and off.</p></header>\n",
    );
    page.push_str(&legend());
    page.push_str(
        "<div id=\"controls\"><label>zoom <select id=\"zoom\"><option value=\"1\">1×</option>\
         <option value=\"2\">2×</option><option value=\"4\">4×</option><option value=\"8\">8×</option>\
         <option value=\"16\">16×</option></select></label></div>\n\
         <div id=\"layout\"><div id=\"chart-wrap\"><div id=\"chart\"></div></div>\n\
         <aside id=\"detail\" aria-live=\"polite\"><p class=\"help\">Click a request, a decision, \
         a fault window, a timeline step or the violation to see its event here.</p></aside></div>\n\
         <section id=\"lists\"><h2>Fault windows</h2><ul id=\"fault-list\"></ul>\n\
         <h2>Timeline</h2><ol id=\"step-list\"></ol></section>\n",
    );
    page.push_str(&format!(
        "<script type=\"application/json\" id=\"{DATA_ELEMENT_ID}\">{}</script>\n",
        inline_json(&json)
    ));
    page.push_str("<script>\n");
    page.push_str(SCRIPT);
    page.push_str("</script>\n</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlined_json_cannot_end_its_script_and_means_the_same() {
        let json = serde_json::json!({"what": "</script><!-- & <b>"}).to_string();
        let inlined = inline_json(&json);
        assert!(!inlined.contains('<') && !inlined.contains('>'));
        let back: serde_json::Value = serde_json::from_str(&inlined).unwrap();
        assert_eq!(back["what"], "</script><!-- & <b>");
    }

    #[test]
    fn every_legend_key_has_a_colour_rule_and_an_entry() {
        let (css, legend) = (colour_rules(), legend());
        for e in data::LEGEND {
            assert!(css.contains(&format!(".k-{} {{", e.key)), "{}", e.key);
            assert!(
                legend.contains(&format!("data-legend=\"{}\"", e.key)),
                "{}",
                e.key
            );
        }
    }
}
