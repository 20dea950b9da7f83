//! Turns what nginx-sys found out about the nginx tree (its `links = "nginx"`
//! metadata) into cfgs, so the FFI code can follow struct fields that only
//! exist with some configure flags or nginx versions.

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        std::env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = std::env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // Upstream peers got a `zombie` flag (servers removed by `resolve`) in 1.27.3.
    println!("cargo::rustc-check-cfg=cfg(nginx_peer_zombie)");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    let version: u64 = std::env::var("DEP_NGINX_VERSION_NUMBER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if version >= 1_027_003 {
        println!("cargo::rustc-cfg=nginx_peer_zombie");
    }
}
