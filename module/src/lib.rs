//! `ngx_http_upstreamtop_module`: serves what the upstreamtop probe saw on
//! the wire, joined with nginx's own `upstream {}` configuration.
//!
//! ```nginx
//! load_module modules/ngx_http_upstreamtop_module.so;
//! http {
//!     upstreamtop_table /run/upstreamtop/table;   # default
//!     server {
//!         location = /upstreamtop { upstreamtop_status; allow 127.0.0.1; deny all; }
//!     }
//! }
//! ```
//!
//! This file holds the module definition nginx loads; the directives
//! (`directives.rs`), the content handler (`handler.rs`), the extraction of
//! nginx's configuration (`nginx_conf.rs`) and the per-worker cache of
//! rendered answers (`render_cache.rs`) each live in their own file. What
//! an answer says is decided in the `upstreamtop-report` crate.

use std::ptr::addr_of;

use ngx::ffi::{
    ngx_command_t, ngx_http_module_t, ngx_module_t, ngx_uint_t, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError};
use ngx::ngx_string;

mod directives;
mod handler;
mod nginx_conf;
mod render_cache;

/// Where the probe publishes when `upstreamtop_table` is not given.
pub const DEFAULT_TABLE_PATH: &str = "/run/upstreamtop/table";

/// Marker type tying the ngx-rust traits to [`ngx_http_upstreamtop_module`].
pub(crate) struct Module;

/// `http {}`-level settings.
#[derive(Debug, Default)]
pub(crate) struct MainConf {
    /// `upstreamtop_table PATH;` — `None` means [`DEFAULT_TABLE_PATH`].
    pub table: Option<String>,
}

impl MainConf {
    pub fn table_path(&self) -> &str {
        self.table.as_deref().unwrap_or(DEFAULT_TABLE_PATH)
    }
}

/// What `upstreamtop_status [json|prometheus|html] [noroutes];` asked for: the
/// defaults of the location's answers.
pub(crate) type StatusConf = upstreamtop_report::Defaults;

/// `location {}`-level settings.
#[derive(Debug, Default)]
pub(crate) struct LocConf {
    /// Set in locations that carry `upstreamtop_status`.
    pub status: Option<StatusConf>,
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        // Nested `if` blocks get their own location conf; they should answer
        // the same way as the location around them.
        if self.status.is_none() {
            self.status = prev.status;
        }
        Ok(())
    }
}

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only mutated by nginx while it loads
        // the configuration (index assignment), never concurrently with this.
        unsafe { &*addr_of!(ngx_http_upstreamtop_module) }
    }
}

// SAFETY: MainConf is the type create_main_conf allocates for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: LocConf is the type create_loc_conf allocates for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static mut NGX_HTTP_UPSTREAMTOP_COMMANDS: [ngx_command_t; 3] = [
    ngx_command_t {
        name: ngx_string!("upstreamtop_table"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(directives::set_table),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("upstreamtop_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE12) as ngx_uint_t,
        set: Some(directives::set_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static NGX_HTTP_UPSTREAMTOP_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

// The `ngx_modules` table nginx looks for in a dynamic module built outside
// its own build system.
ngx::ngx_modules!(ngx_http_upstreamtop_module);

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_upstreamtop_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(NGX_HTTP_UPSTREAMTOP_MODULE_CTX) as _,
    // SAFETY: only the address is taken; nginx reads the array, never writes it.
    commands: unsafe { &NGX_HTTP_UPSTREAMTOP_COMMANDS[0] as *const _ as *mut _ },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};
