//! The `upstreamtop_table` and `upstreamtop_status` directive handlers.
//!
//! nginx itself rejects a wrong argument count or context, naming the
//! directive; these handlers reject bad values with a message that names it
//! too, so `nginx -t` points at the line to fix.

use std::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_str_t, NGX_LOG_EMERG};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;

use upstreamtop_report::Format;

use crate::{LocConf, MainConf, StatusConf};

/// The directive's arguments (without its name), as UTF-8.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a directive handler.
unsafe fn directive_args<'a>(cf: *mut ngx_conf_t) -> Result<(&'a str, Vec<&'a str>), String> {
    // SAFETY: while a directive handler runs, cf->args is the array of the
    // directive's words (name first), allocated from the config pool.
    let words: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    let name = words.first().and_then(|w| w.to_str().ok()).unwrap_or("?");
    let mut args = Vec::with_capacity(words.len().saturating_sub(1));
    for word in words.iter().skip(1) {
        match word.to_str() {
            Ok(s) => args.push(s),
            Err(_) => return Err(format!("\"{name}\" directive: argument is not valid UTF-8")),
        }
    }
    Ok((name, args))
}

/// Validates the argument of `upstreamtop_table PATH;`.
fn parse_table_path(arg: &str) -> Result<String, String> {
    if arg.is_empty() {
        return Err("empty path in \"upstreamtop_table\" directive".into());
    }
    // nginx workers may run with any working directory: a relative path
    // would silently point somewhere else.
    if !arg.starts_with('/') {
        return Err(format!("\"upstreamtop_table\" directive: path \"{arg}\" must be absolute"));
    }
    Ok(arg.to_owned())
}

/// Validates the arguments of `upstreamtop_status [json|prometheus|html] [noroutes];`.
fn parse_status_args(args: &[&str]) -> Result<StatusConf, String> {
    let mut conf = StatusConf::default();
    let mut format_seen = false;
    let mut noroutes_seen = false;
    for &arg in args {
        match arg {
            "json" | "prometheus" | "html" if !format_seen => {
                format_seen = true;
                conf.format = match arg {
                    "prometheus" => Format::Prometheus,
                    "html" => Format::Html,
                    _ => Format::Json,
                };
            }
            "noroutes" if !noroutes_seen => {
                noroutes_seen = true;
                conf.route_labels = false;
            }
            "json" | "prometheus" | "html" | "noroutes" => {
                return Err(format!("duplicate argument \"{arg}\" in \"upstreamtop_status\" directive"))
            }
            _ => {
                return Err(format!(
                    "invalid argument \"{arg}\" in \"upstreamtop_status\" directive, \
                     expected \"json\", \"prometheus\", \"html\" or \"noroutes\""
                ))
            }
        }
    }
    Ok(conf)
}

/// `upstreamtop_table PATH;` (http context).
pub(crate) extern "C" fn set_table(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx calls this with its own cf, and conf pointing at this
    // module's main conf (NGX_HTTP_MAIN_CONF_OFFSET), which create_main_conf
    // allocated as a MainConf.
    let (main, parsed) = unsafe {
        let main = &mut *(conf as *mut MainConf);
        (main, directive_args(cf))
    };
    let result = parsed.and_then(|(_, args)| {
        if main.table.is_some() {
            return Err("\"upstreamtop_table\" directive is duplicate".to_string());
        }
        parse_table_path(args.first().copied().unwrap_or(""))
    });
    match result {
        Ok(path) => {
            main.table = Some(path);
            NGX_CONF_OK
        }
        Err(msg) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
            NGX_CONF_ERROR
        }
    }
}

/// `upstreamtop_status [json|prometheus|html] [noroutes];` (location context):
/// makes the location's content handler ours.
pub(crate) extern "C" fn set_status(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx calls this with its own cf, and conf pointing at this
    // module's location conf (NGX_HTTP_LOC_CONF_OFFSET), allocated by
    // create_loc_conf as a LocConf.
    let (loc, parsed) = unsafe {
        let loc = &mut *(conf as *mut LocConf);
        (loc, directive_args(cf))
    };
    let result = parsed.and_then(|(_, args)| {
        if loc.status.is_some() {
            return Err("\"upstreamtop_status\" directive is duplicate".to_string());
        }
        parse_status_args(&args)
    });
    let status = match result {
        Ok(status) => status,
        Err(msg) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
            return NGX_CONF_ERROR;
        }
    };
    // SAFETY: in a location block cf->ctx is that location's http conf ctx,
    // whose core loc conf nginx allocated before parsing the block.
    let clcf = unsafe { NgxHttpCoreModule::location_conf_mut(&*cf) };
    let Some(clcf) = clcf else {
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"upstreamtop_status\" directive: no http core location configuration");
        return NGX_CONF_ERROR;
    };
    clcf.handler = Some(crate::handler::status_handler);
    loc.status = Some(status);
    NGX_CONF_OK
}
