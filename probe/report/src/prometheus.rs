pub fn render_prometheus(_r: &crate::Report, _q: &crate::Query) -> String { String::new() }
