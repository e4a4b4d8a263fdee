//! The landing page at `/`: what this server is and where its data is.

use crate::engine::units::UnitTable;

/// The page, as HTML: the version, how many units are watched and links to `/metrics` and,
/// when the API is served, `/api/units`.
pub fn page(table: &UnitTable, api_enabled: bool) -> String {
    let api = if api_enabled {
        "<li><a href=\"/api/units\">Units</a> (the status API)</li>\n"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>crashwatch</title></head>\n<body>\n<h1>crashwatch</h1>\n\
         <p>Version {version}. Watching {units} units.</p>\n<ul>\n\
         <li><a href=\"/metrics\">Metrics</a></li>\n{api}</ul>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
        units = table.iter().count(),
    )
}
