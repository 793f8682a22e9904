//! OpenAPI from the effective configuration: `idem docs --format openapi` writes an
//! OpenAPI 3.1 document of what the idempotency layer adds to each covered operation;
//! `idem docs --openapi-merge api.yaml` adds the same to an existing document.
//!
//! What a covered operation gets:
//! - the key header as a parameter (`required` where the rule requires a key, R3);
//! - `Idempotent-Replayed` on each response that can be replayed (R7, R8);
//! - a problem response (RFC 9457, `application/problem+json`) per status the layer may
//!   answer, whose `type` is one of an enum of that status's problem types (R17), with
//!   `Retry-After` on 409 (R10) and 503 (R15).
//!
//! Which operations are covered follows the proxy exactly: the first `[[route]]` whose
//! pattern matches every request of an operation decides (a rule with
//! `enabled = false` leaves it out); an operation no rule matches gets the server-wide
//! settings. A document's paths are taken under the path of its first `servers` URL
//! (`https://api.example.com/v1` + `/pets` is `/v1/pets` to the rules).
//!
//! Patterns and OpenAPI paths: `{name}` and `*` stand for one segment, as an OpenAPI
//! path parameter does, so `/pets/{id}` matches `/pets/{petId}` and `/pets/mine`. A
//! literal segment matches only that literal: a rule for `/pets/mine` covers some
//! requests of `/pets/{petId}`, not all, and is reported. `**` (any number of
//! segments) has no OpenAPI path form: with `--openapi-merge` it covers the document's
//! operations below it; in the standalone document it is listed under `x-idem-routes`
//! with every other rule and the server-wide settings, but adds no path.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use http::{Method, StatusCode};
use idem::core::policy::{AmbiguousFailure, OnConcurrent, Policy, StoreFailure, Unscoped};
use idem::core::{Problem, ProblemKind};
use serde_yaml_ng::{Mapping, Value};

use crate::routes::{self, Route};
use crate::text::title_case;

/// The largest OpenAPI document read.
const MAX_DOCUMENT: u64 = 16 << 20;

/// Component names; `Idem`-prefixed so they do not collide with an API's own.
const KEY_PARAM: &str = "IdempotencyKey";
const KEY_PARAM_REQUIRED: &str = "IdempotencyKeyRequired";
const REPLAYED_HEADER: &str = "IdempotentReplayed";
const RETRY_AFTER_HEADER: &str = "IdemRetryAfter";
const PROBLEM_SCHEMA: &str = "IdemProblem";

/// The OpenAPI operation keys of a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What `idem docs` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DocsFormat {
    /// Markdown for an API's public docs.
    Markdown,
    /// An OpenAPI 3.1 document, JSON.
    Openapi,
    /// An OpenAPI 3.1 document, YAML.
    OpenapiYaml,
}

/// The OpenAPI flags of `idem docs`.
#[derive(Debug, Args)]
pub struct OpenApiArgs {
    /// What to print: markdown, or an OpenAPI 3.1 document of every covered operation
    /// (openapi: JSON, openapi-yaml: YAML). Default: markdown; with --openapi-merge,
    /// the merged document in its own format.
    #[arg(long, value_enum)]
    pub format: Option<DocsFormat>,
    /// Add the key parameter, replay and Retry-After headers and problem responses to
    /// the operations the rules cover in this OpenAPI 3 document (JSON or YAML), and
    /// print it; the rest is left as it was (comments and layout are not kept).
    #[arg(long, value_name = "FILE")]
    pub openapi_merge: Option<PathBuf>,
}

/// A document that cannot be read or merged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenApiError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than idem reads.
    #[error("{0}: larger than 16 MiB")]
    TooLarge(String),
    /// Not JSON or YAML.
    #[error("{path}: not valid {format}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// JSON or YAML.
        format: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Not an OpenAPI 3 document.
    #[error("{path}: {reason}")]
    NotOpenApi {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The document already has a component of that name with other content.
    #[error(
        "{path}: `{name}` already exists with other content; idem's components would replace it"
    )]
    Collision {
        /// The file.
        path: String,
        /// e.g. `components.schemas.IdemProblem`.
        name: String,
    },
    /// The result cannot be written in the asked format.
    #[error("cannot write the document as {format}: {reason}")]
    Write {
        /// JSON or YAML.
        format: &'static str,
        /// Why.
        reason: String,
    },
}

/// JSON or YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON",
            Self::Yaml => "YAML",
        })
    }
}

/// A document with the notes made while building it.
#[derive(Debug)]
pub struct Document {
    /// The OpenAPI document.
    pub doc: Value,
    /// Rules that match no operation, or only some requests of one.
    pub warnings: Vec<String>,
}

/// `idem docs` with `--format openapi[-yaml]` or `--openapi-merge`: the text to print
/// and warnings for stderr; `None` when Markdown was asked for.
pub fn docs(
    args: &OpenApiArgs,
    policy: &Policy,
    routes: &[Route],
) -> Result<Option<(String, Vec<String>)>, OpenApiError> {
    match (&args.openapi_merge, args.format) {
        (None, None | Some(DocsFormat::Markdown)) => Ok(None),
        (Some(path), Some(DocsFormat::Markdown)) => Err(OpenApiError::NotOpenApi {
            path: path.display().to_string(),
            reason: "--openapi-merge writes OpenAPI: use --format openapi or openapi-yaml, \
                     or leave --format out"
                .to_owned(),
        }),
        (None, Some(format)) => {
            let out = fragment(policy, routes);
            let encoding = if format == DocsFormat::OpenapiYaml {
                Encoding::Yaml
            } else {
                Encoding::Json
            };
            Ok(Some((render(&out.doc, encoding)?, out.warnings)))
        }
        (Some(path), format) => {
            let (doc, encoding) = load(path)?;
            let out = merge(doc, &path.display().to_string(), policy, routes)?;
            let encoding = match format {
                Some(DocsFormat::Openapi) => Encoding::Json,
                Some(DocsFormat::OpenapiYaml) => Encoding::Yaml,
                _ => encoding,
            };
            Ok(Some((render(&out.doc, encoding)?, out.warnings)))
        }
    }
}

/// Reads an OpenAPI document, JSON (when it starts with `{`) or YAML.
pub fn load(path: &Path) -> Result<(Value, Encoding), OpenApiError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| OpenApiError::Read {
        path: name.clone(),
        source,
    })?;
    if meta.len() > MAX_DOCUMENT {
        return Err(OpenApiError::TooLarge(name));
    }
    let text = std::fs::read_to_string(path).map_err(|source| OpenApiError::Read {
        path: name.clone(),
        source,
    })?;
    parse(&name, &text)
}

/// Parses a document's text; `name` is for messages.
pub fn parse(name: &str, text: &str) -> Result<(Value, Encoding), OpenApiError> {
    let syntax = |format, reason: String| OpenApiError::Syntax {
        path: name.to_owned(),
        format,
        reason,
    };
    if text.trim_start().starts_with('{') {
        let doc = serde_json::from_str(text).map_err(|e| syntax("JSON", e.to_string()))?;
        Ok((doc, Encoding::Json))
    } else {
        let doc = serde_yaml_ng::from_str(text).map_err(|e| syntax("YAML", e.to_string()))?;
        Ok((doc, Encoding::Yaml))
    }
}

/// The document as text.
pub fn render(doc: &Value, encoding: Encoding) -> Result<String, OpenApiError> {
    let write = |reason: String| OpenApiError::Write {
        format: match encoding {
            Encoding::Json => "JSON",
            Encoding::Yaml => "YAML",
        },
        reason,
    };
    match encoding {
        Encoding::Json => serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(|e| write(e.to_string())),
        Encoding::Yaml => serde_yaml_ng::to_string(doc).map_err(|e| write(e.to_string())),
    }
}

/// The standalone OpenAPI 3.1 document: one path per rule that has an OpenAPI form,
/// every rule and the server-wide settings under `x-idem-routes`, and the components.
pub fn fragment(policy: &Policy, routes: &[Route]) -> Document {
    let mut paths = Mapping::new();
    let mut warnings = Vec::new();
    // The path key each normalised template got first, so `/a/{id}` and `/a/*` share one.
    let mut keys: Vec<(Vec<DocSegment>, String)> = Vec::new();
    let mut scratch = vec![false; routes.len()];
    for (i, route) in routes.iter().enumerate() {
        let Some(p) = &route.policy else { continue };
        let Some(segments) = route_segments(route.pattern.path()) else {
            continue;
        };
        if segments.contains(&RouteSegment::Rest) {
            continue;
        }
        let (path, params) = template(&segments);
        let doc_segments = doc_segments(&path);
        // The operations this rule decides: its methods that an earlier rule does not
        // take first.
        let mut methods = Vec::new();
        for method in p.methods() {
            let allowed =
                route.pattern.methods().is_empty() || route.pattern.methods().contains(method);
            let name = method.as_str().to_ascii_lowercase();
            if !allowed || !METHODS.contains(&name.as_str()) {
                continue;
            }
            match resolve(routes, method, &doc_segments, &mut scratch).by {
                Some(j) if j == i => methods.push((method.clone(), name)),
                Some(j) => warnings.push(format!(
                    "route {} `{}` ({}) never applies to {method} {}: route {} `{}` matches \
                     first",
                    i + 1,
                    route.pattern,
                    route.origin,
                    route.pattern.path(),
                    j + 1,
                    routes[j].pattern
                )),
                None => {}
            }
        }
        if methods.is_empty() {
            continue;
        }
        let key = match keys.iter().find(|(s, _)| *s == doc_segments) {
            Some((_, key)) => key.clone(),
            None => {
                keys.push((doc_segments, path.clone()));
                path
            }
        };
        let item = paths.entry(text(&key)).or_insert_with(|| {
            let params: Vec<Value> = params
                .iter()
                .map(|name| {
                    obj([
                        ("name", text(name)),
                        ("in", text("path")),
                        ("required", Value::Bool(true)),
                        ("schema", obj([("type", text("string"))])),
                    ])
                })
                .collect();
            let mut item = Mapping::new();
            if !params.is_empty() {
                item.insert(text("parameters"), Value::Sequence(params));
            }
            Value::Mapping(item)
        });
        let Value::Mapping(item) = item else { continue };
        for (method, name) in methods {
            if item.contains_key(name.as_str()) {
                continue;
            }
            item.insert(
                text(&name),
                obj([
                    (
                        "summary",
                        text(&format!("{method} {}", route.pattern.path())),
                    ),
                    (
                        "description",
                        text(&format!(
                            "Covered by the rule `{}` ({}).",
                            route.pattern, route.origin
                        )),
                    ),
                    (
                        "responses",
                        obj([(
                            "default",
                            obj([(
                                "description",
                                text(
                                    "The API's own response; a retry with the same key gets \
                                     it again.",
                                ),
                            )]),
                        )]),
                    ),
                ]),
            );
        }
    }
    let skeleton = obj([
        ("openapi", text("3.1.0")),
        (
            "info",
            obj([
                ("title", text("Idempotency keys (idem)")),
                ("version", text(env!("CARGO_PKG_VERSION"))),
                (
                    "description",
                    text(
                        "What the idempotency layer adds to the API's operations: the key \
                         header, the replay marker, and the problem responses it may answer. \
                         `x-idem-routes` lists every rule, first match wins, then the \
                         server-wide settings for every other path.",
                    ),
                ),
            ]),
        ),
        ("paths", Value::Mapping(paths)),
    ]);
    // The skeleton has only the operations its rules decide, and no components of its
    // own, so the merge neither warns nor collides.
    let mut doc = match merge_value(skeleton, "(generated)", policy, routes, true) {
        Ok(out) => out.doc,
        Err(e) => {
            warnings.push(e.to_string());
            Value::Null
        }
    };
    if let Value::Mapping(m) = &mut doc {
        m.insert(text("x-idem-routes"), routes_table(policy, routes));
    }
    Document { doc, warnings }
}

/// `doc` with idem's additions on every operation the rules cover; `name` is for
/// messages.
pub fn merge(
    doc: Value,
    name: &str,
    policy: &Policy,
    routes: &[Route],
) -> Result<Document, OpenApiError> {
    merge_value(doc, name, policy, routes, false)
}

/// Warnings about rules that match no operation of `doc` (and rules that match only
/// some requests of one).
pub fn route_warnings(
    doc: &Value,
    name: &str,
    policy: &Policy,
    routes: &[Route],
) -> Result<Vec<String>, OpenApiError> {
    Ok(merge_value(doc.clone(), name, policy, routes, false)?.warnings)
}

fn merge_value(
    mut doc: Value,
    name: &str,
    policy: &Policy,
    routes: &[Route],
    all_components: bool,
) -> Result<Document, OpenApiError> {
    let not_openapi = |reason: &str| OpenApiError::NotOpenApi {
        path: name.to_owned(),
        reason: reason.to_owned(),
    };
    let Value::Mapping(root) = &mut doc else {
        return Err(not_openapi(
            "not an OpenAPI document (the top level is not an object)",
        ));
    };
    if root.contains_key("swagger") {
        return Err(not_openapi(
            "a Swagger 2.0 document; convert it to OpenAPI 3 first",
        ));
    }
    match root.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => return Err(not_openapi(&format!("OpenAPI {v}: only 3.x is supported"))),
        None => {
            return Err(not_openapi(
                "no `openapi: 3.x` field: not an OpenAPI 3 document",
            ));
        }
    }
    let base = base_path(root);
    let component_params = root
        .get("components")
        .and_then(|c| c.get("parameters"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();

    let mut used = Used::default();
    let mut matched = vec![false; routes.len()];
    let mut warnings = Vec::new();
    if let Some(Value::Mapping(paths)) = root.get_mut("paths") {
        for (path, item) in paths.iter_mut() {
            let Some(path) = path.as_str() else { continue };
            let Value::Mapping(item) = item else { continue };
            let mut segments = base.clone();
            segments.extend(doc_segments(path));
            let path_params = item.get("parameters").cloned();
            for method in METHODS {
                let Some(Value::Mapping(op)) = item.get_mut(method) else {
                    continue;
                };
                let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                let found = resolve(routes, &m, &segments, &mut matched);
                let decided = effect(found.policy(policy, routes), &m);
                for i in &found.partial {
                    // Only a rule that would treat some of these requests otherwise
                    // makes the documented operation wrong for them.
                    let r = &routes[*i];
                    if effect(r.policy.as_ref(), &m) == decided {
                        continue;
                    }
                    warnings.push(format!(
                        "route {} `{}` ({}) matches only some requests of {} {path}, and \
                         treats them otherwise; the operation is documented as {} says",
                        i + 1,
                        r.pattern,
                        r.origin,
                        method.to_ascii_uppercase(),
                        found.by.map_or_else(
                            || "the server-wide setting".to_owned(),
                            |j| format!("route {}", j + 1)
                        )
                    ));
                }
                let Some(p) = found.policy(policy, routes) else {
                    continue;
                };
                if !p.methods().contains(&m) {
                    continue;
                }
                annotate(op, path_params.as_ref(), &component_params, p, &mut used);
            }
        }
    }
    for (i, hit) in matched.iter().enumerate() {
        if !hit {
            let r = &routes[i];
            warnings.push(format!(
                "route {} `{}` ({}) matches no operation of {name}",
                i + 1,
                r.pattern,
                r.origin
            ));
        }
    }
    if all_components {
        used = Used {
            key: true,
            key_required: true,
            replayed: true,
            retry_after: true,
            problem: true,
        };
    }
    add_components(root, name, policy, &used)?;
    Ok(Document { doc, warnings })
}

/// Which components the annotated operations refer to.
#[derive(Debug, Default)]
struct Used {
    key: bool,
    key_required: bool,
    replayed: bool,
    retry_after: bool,
    problem: bool,
}

/// The rule that decides an operation.
struct Found {
    /// The rule that matches all of the operation's requests, if any.
    by: Option<usize>,
    /// Earlier rules that match only some of them.
    partial: Vec<usize>,
}

impl Found {
    /// The policy the operation gets; `None` when a rule passes it through.
    fn policy<'a>(&self, server: &'a Policy, routes: &'a [Route]) -> Option<&'a Policy> {
        match self.by {
            Some(i) => routes[i].policy.as_ref(),
            None => Some(server),
        }
    }
}

/// What an operation's requests get: not covered (`None`), or covered with a key
/// required or not.
fn effect(p: Option<&Policy>, method: &Method) -> Option<bool> {
    p.filter(|p| p.methods().contains(method))
        .map(Policy::require_key)
}

/// First match wins, as in the proxy; marks every rule that matches any request of the
/// operation in `matched`.
fn resolve(routes: &[Route], method: &Method, doc: &[DocSegment], matched: &mut [bool]) -> Found {
    let mut found = Found {
        by: None,
        partial: Vec::new(),
    };
    for (i, route) in routes.iter().enumerate() {
        let methods = route.pattern.methods();
        if !methods.is_empty() && !methods.contains(method) {
            continue;
        }
        let Some(segments) = route_segments(route.pattern.path()) else {
            continue;
        };
        match relation(&segments, doc) {
            Relation::None => {}
            Relation::Partial => {
                matched[i] = true;
                if found.by.is_none() {
                    found.partial.push(i);
                }
            }
            Relation::Full => {
                matched[i] = true;
                if found.by.is_none() {
                    found.by = Some(i);
                }
            }
        }
    }
    found
}

/// A segment of a rule's path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RouteSegment {
    Literal(String),
    /// `*` or `{name}` (the name, if any).
    One(Option<String>),
    /// A final `**`.
    Rest,
}

/// A segment of an OpenAPI path: a literal, or one containing a `{parameter}`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DocSegment {
    Literal(String),
    Param,
}

/// The segments of a rule's path (already validated by the pattern parser).
fn route_segments(path: &str) -> Option<Vec<RouteSegment>> {
    let rest = path.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| match s {
                "**" => RouteSegment::Rest,
                "*" => RouteSegment::One(None),
                s if s.starts_with('{') && s.ends_with('}') && s.len() > 2 => {
                    RouteSegment::One(Some(s[1..s.len() - 1].to_owned()))
                }
                s => RouteSegment::Literal(s.to_owned()),
            })
            .collect(),
    )
}

fn doc_segments(path: &str) -> Vec<DocSegment> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|s| {
            if s.contains('{') {
                DocSegment::Param
            } else {
                DocSegment::Literal(s.to_owned())
            }
        })
        .collect()
}

/// How a rule's pattern relates to the requests of an OpenAPI path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Relation {
    /// It matches none of them.
    None,
    /// Some of them (a literal where the document has a parameter).
    Partial,
    /// All of them.
    Full,
}

fn relation(route: &[RouteSegment], doc: &[DocSegment]) -> Relation {
    let mut rel = Relation::Full;
    let mut doc = doc.iter();
    for seg in route {
        match (seg, doc.next()) {
            (RouteSegment::Rest, _) => return rel,
            (_, None) => return Relation::None,
            (RouteSegment::One(_), Some(_)) => {}
            (RouteSegment::Literal(a), Some(DocSegment::Literal(b))) if a == b => {}
            (RouteSegment::Literal(_), Some(DocSegment::Literal(_))) => return Relation::None,
            (RouteSegment::Literal(_), Some(DocSegment::Param)) => rel = Relation::Partial,
        }
    }
    if doc.next().is_some() {
        Relation::None
    } else {
        rel
    }
}

/// An OpenAPI path for a pattern without `**`, with its parameter names: `{name}` keeps
/// its name when it is a plain identifier, `*` and any other become `p1`, `p2`, …
fn template(segments: &[RouteSegment]) -> (String, Vec<String>) {
    let mut path = String::new();
    let mut params: Vec<String> = Vec::new();
    for seg in segments {
        path.push('/');
        match seg {
            RouteSegment::Literal(s) => path.push_str(s),
            RouteSegment::One(name) => {
                let plain = name.as_deref().filter(|n| {
                    n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
                let name = match plain {
                    Some(n) if !params.iter().any(|p| p == n) => n.to_owned(),
                    _ => format!("p{}", params.len() + 1),
                };
                path.push('{');
                path.push_str(&name);
                path.push('}');
                params.push(name);
            }
            RouteSegment::Rest => {}
        }
    }
    (path, params)
}

/// The path of the first `servers` URL, as segments (none when absent or `/`).
fn base_path(root: &Mapping) -> Vec<DocSegment> {
    let Some(server) = root
        .get("servers")
        .and_then(Value::as_sequence)
        .and_then(|s| s.first())
    else {
        return Vec::new();
    };
    let Some(url) = server.get("url").and_then(Value::as_str) else {
        return Vec::new();
    };
    // Server variables take their defaults.
    let mut url = url.to_owned();
    if let Some(Value::Mapping(vars)) = server.get("variables") {
        for (k, v) in vars {
            if let (Some(k), Some(d)) = (k.as_str(), v.get("default").and_then(Value::as_str)) {
                url = url.replace(&format!("{{{k}}}"), d);
            }
        }
    }
    let path = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("", |j| &url[i + 3 + j..]),
        None => url.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Vec::new();
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    doc_segments(&path)
}

/// The key lookup for mappings whose keys may be YAML numbers (`200:`).
fn key_text(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn find_mut<'a>(m: &'a mut Mapping, key: &str) -> Option<&'a mut Value> {
    m.iter_mut()
        .find(|(k, _)| key_text(k).as_deref() == Some(key))
        .map(|(_, v)| v)
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::with_capacity(N);
    for (k, v) in pairs {
        m.insert(text(k), v);
    }
    Value::Mapping(m)
}

fn reference(kind: &str, name: &str) -> Value {
    obj([("$ref", text(&format!("#/components/{kind}/{name}")))])
}

/// True when a parameter list declares the header `name` (inline or by a local `$ref`).
fn declares_header(params: Option<&Value>, components: &Mapping, name: &str) -> Option<Value> {
    let params = params?.as_sequence()?;
    params.iter().find_map(|p| {
        let p = match p.get("$ref").and_then(Value::as_str) {
            Some(r) => components.get(r.strip_prefix("#/components/parameters/")?)?,
            None => p,
        };
        let is_header = p.get("in").and_then(Value::as_str) == Some("header");
        let same = p
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name));
        (is_header && same).then(|| p.clone())
    })
}

/// Adds idem's parts to one covered operation.
fn annotate(
    op: &mut Mapping,
    path_params: Option<&Value>,
    components: &Mapping,
    p: &Policy,
    used: &mut Used,
) {
    let header = p.header().as_str();
    let declared = declares_header(op.get("parameters"), components, header)
        .or_else(|| declares_header(path_params, components, header));
    if declared.is_none() {
        let param = if p.require_key() {
            used.key_required = true;
            reference("parameters", KEY_PARAM_REQUIRED)
        } else {
            used.key = true;
            reference("parameters", KEY_PARAM)
        };
        match op.get_mut("parameters") {
            Some(Value::Sequence(list)) => list.push(param),
            _ => {
                op.insert(text("parameters"), Value::Sequence(vec![param]));
            }
        }
    }
    if !matches!(op.get("responses"), Some(Value::Mapping(_))) {
        op.insert(text("responses"), Value::Mapping(Mapping::new()));
    }
    let Some(Value::Mapping(responses)) = op.get_mut("responses") else {
        return;
    };
    // The API's own responses that a retry can get again.
    for (code, resp) in responses.iter_mut() {
        let Some(code) = key_text(code) else { continue };
        let Value::Mapping(resp) = resp else { continue };
        if resp.contains_key("$ref") || !replayable(&code, p) || is_ours(resp) {
            continue;
        }
        if add_header(resp, "Idempotent-Replayed", REPLAYED_HEADER) {
            used.replayed = true;
        }
    }
    for (status, kinds) in problems(p) {
        let code = status.as_u16().to_string();
        let retry_after = kinds
            .iter()
            .any(|k| matches!(k, ProblemKind::InFlight | ProblemKind::StoreUnavailable));
        let contents = problem_contents(p, &kinds);
        match find_mut(responses, &code) {
            Some(Value::Mapping(resp)) if !resp.contains_key("$ref") => {
                if !matches!(resp.get("content"), Some(Value::Mapping(_))) {
                    resp.insert(text("content"), Value::Mapping(Mapping::new()));
                }
                if let Some(Value::Mapping(c)) = resp.get_mut("content") {
                    for (media_type, media) in contents {
                        if !c.contains_key(media_type.as_str()) {
                            used.problem |= media_type == idem::core::problem::CONTENT_TYPE;
                            c.insert(text(&media_type), media);
                        }
                    }
                }
                if retry_after && add_header(resp, "Retry-After", RETRY_AFTER_HEADER) {
                    used.retry_after = true;
                }
            }
            Some(_) => {}
            None => {
                let mut resp = Mapping::new();
                let titles: Vec<&str> = kinds.iter().map(|k| k.title()).collect();
                resp.insert(
                    text("description"),
                    text(&format!(
                        "From the idempotency layer: {}.",
                        titles.join("; ")
                    )),
                );
                if retry_after {
                    resp.insert(
                        text("headers"),
                        obj([("Retry-After", reference("headers", RETRY_AFTER_HEADER))]),
                    );
                    used.retry_after = true;
                }
                let mut content = Mapping::new();
                for (media_type, media) in contents {
                    used.problem |= media_type == idem::core::problem::CONTENT_TYPE;
                    content.insert(text(&media_type), media);
                }
                resp.insert(text("content"), Value::Mapping(content));
                responses.insert(text(&code), Value::Mapping(resp));
            }
        }
    }
}

/// True for a problem response this module added (only idem's problem content): the
/// layer's own answers are never stored, so they get no replay marker, even when a
/// document is merged again.
fn is_ours(resp: &Mapping) -> bool {
    let Some(Value::Mapping(content)) = resp.get("content") else {
        return false;
    };
    let ours = format!("#/components/schemas/{PROBLEM_SCHEMA}");
    !content.is_empty()
        && content.values().all(|media| {
            media.get(TEMPLATED) == Some(&Value::Bool(true))
                || media
                    .get("schema")
                    .and_then(|s| s.get("allOf"))
                    .and_then(|a| a.get(0))
                    .and_then(|r| r.get("$ref"))
                    .and_then(Value::as_str)
                    == Some(ours.as_str())
        })
}

/// Adds `name` to a response's headers unless it has one of that name; true if added.
fn add_header(resp: &mut Mapping, name: &str, component: &str) -> bool {
    if !matches!(resp.get("headers"), Some(Value::Mapping(_))) {
        resp.insert(text("headers"), Value::Mapping(Mapping::new()));
    }
    let Some(Value::Mapping(headers)) = resp.get_mut("headers") else {
        return false;
    };
    let present = headers
        .keys()
        .filter_map(Value::as_str)
        .any(|h| h.eq_ignore_ascii_case(name));
    if present {
        return false;
    }
    headers.insert(text(name), reference("headers", component));
    true
}

/// True when a response key (`201`, `2XX`, `default`) names responses that are stored
/// and replayed (R7).
fn replayable(code: &str, p: &Policy) -> bool {
    if code == "default" {
        return true;
    }
    if let Ok(n) = code.parse::<u16>() {
        return StatusCode::from_u16(n).is_ok_and(|s| p.cacheable().contains(s));
    }
    let class = code.as_bytes();
    if class.len() == 3 && class[1..].eq_ignore_ascii_case(b"xx") && class[0].is_ascii_digit() {
        let base = u16::from(class[0] - b'0') * 100;
        return (base..base + 100)
            .filter_map(|n| StatusCode::from_u16(n).ok())
            .any(|s| p.cacheable().contains(s));
    }
    false
}

/// The problems the layer may answer on an operation under `p`, grouped by status in
/// status order.
fn problems(p: &Policy) -> Vec<(StatusCode, Vec<ProblemKind>)> {
    let mut groups: Vec<(StatusCode, Vec<ProblemKind>)> = Vec::new();
    for kind in ProblemKind::ALL {
        let applies = match kind {
            ProblemKind::MissingKey => p.require_key(),
            ProblemKind::OutcomeUnknown => p.on_ambiguous_failure() == AmbiguousFailure::Hold,
            ProblemKind::UnscopedRequest => {
                p.unscoped() == Unscoped::Refuse && !p.scope().is_shared()
            }
            ProblemKind::StoreUnavailable => p.store_failure() == StoreFailure::FailClosed,
            _ => true,
        };
        if !applies {
            continue;
        }
        let status = status_of(*kind, p);
        match groups.iter_mut().find(|(s, _)| *s == status) {
            Some((_, kinds)) => kinds.push(*kind),
            None => groups.push((status, vec![*kind])),
        }
    }
    groups.sort_by_key(|(s, _)| s.as_u16());
    groups
}

fn status_of(kind: ProblemKind, p: &Policy) -> StatusCode {
    if kind == ProblemKind::PayloadMismatch {
        p.mismatch_status()
    } else {
        kind.status()
    }
}

fn type_uri(kind: ProblemKind, p: &Policy) -> String {
    match p.problem_base() {
        Some(base) => kind.type_uri_at(base),
        None => kind.type_uri(),
    }
}

/// Marks a media type object this module wrote for an operator's problem template
/// (R17), as the `IdemProblem` schema marks the default ones.
const TEMPLATED: &str = "x-idem-problem-template";

/// The media type objects of a problem response whose `type` is one of `kinds`, by
/// media type: the RFC 9457 document for the kinds rendered by default, and for those
/// the operator gave a template (`problem_template_file`) the template's own media type
/// with an example of each, filled as idem fills it.
fn problem_contents(p: &Policy, kinds: &[ProblemKind]) -> Vec<(String, Value)> {
    let templates = p.problems().templates();
    let (templated, plain): (Vec<ProblemKind>, Vec<ProblemKind>) = kinds
        .iter()
        .partition(|k| templates.is_some_and(|t| t.get(**k).is_some()));
    let mut contents = Vec::new();
    if !plain.is_empty() {
        contents.push((
            idem::core::problem::CONTENT_TYPE.to_owned(),
            problem_content(p, &plain),
        ));
    }
    for kind in templated {
        let problem = Problem::new(kind, kind.advice());
        let (media_type, body) = p.problems().body(&problem);
        let media_type = media_type.to_str().unwrap_or("application/json").to_owned();
        let example = obj([
            ("summary", text(kind.title())),
            ("value", serde_json::from_value(body).unwrap_or(Value::Null)),
        ]);
        match contents.iter_mut().find(|(m, _)| *m == media_type) {
            Some((_, Value::Mapping(media))) => {
                if let Some(Value::Mapping(examples)) = media.get_mut("examples") {
                    examples.insert(text(kind.slug()), example);
                }
            }
            _ => contents.push((
                media_type,
                obj([
                    ("schema", Value::Mapping(Mapping::new())),
                    ("examples", obj([(kind.slug(), example)])),
                    (TEMPLATED, Value::Bool(true)),
                ]),
            )),
        }
    }
    contents
}

/// The media type object of a problem response whose `type` is one of `kinds`.
fn problem_content(p: &Policy, kinds: &[ProblemKind]) -> Value {
    let types: Vec<Value> = kinds.iter().map(|k| text(&type_uri(*k, p))).collect();
    obj([(
        "schema",
        obj([(
            "allOf",
            Value::Sequence(vec![
                reference("schemas", PROBLEM_SCHEMA),
                obj([(
                    "properties",
                    obj([("type", obj([("enum", Value::Sequence(types))]))]),
                )]),
            ]),
        )]),
    )])
}

/// Adds the components the operations refer to; an existing one of the same name must
/// be equal (a document merged twice stays the same).
fn add_components(
    root: &mut Mapping,
    name: &str,
    p: &Policy,
    used: &Used,
) -> Result<(), OpenApiError> {
    let header = title_case(p.header().as_str());
    let key_param = |required: bool| {
        obj([
            ("name", text(&header)),
            ("in", text("header")),
            ("required", Value::Bool(required)),
            (
                "description",
                text(&format!(
                    "A unique value (a UUID) per operation, sent again with every retry of \
                     it: the first request runs, a retry gets its response again \
                     (`Idempotent-Replayed: true`). 1 to {} visible ASCII characters, bare \
                     or as a quoted string.{}",
                    p.max_key_len(),
                    if required {
                        " Required: a request without it is refused (400, missing-key)."
                    } else {
                        " Optional: a request without it runs unprotected."
                    }
                )),
            ),
            (
                "schema",
                obj([("type", text("string")), ("minLength", Value::from(1u64))]),
            ),
            ("example", text("4f0c8ed3-52b1-4a59-9d4c-1f3a2b6c7d8e")),
        ])
    };
    let mut wanted: Vec<(&str, &str, Value)> = Vec::new();
    if used.key {
        wanted.push(("parameters", KEY_PARAM, key_param(false)));
    }
    if used.key_required {
        wanted.push(("parameters", KEY_PARAM_REQUIRED, key_param(true)));
    }
    if used.replayed {
        wanted.push((
            "headers",
            REPLAYED_HEADER,
            obj([
                (
                    "description",
                    text(
                        "Present on a replay: the response of the first request with this \
                         key, status, headers and body byte for byte; the operation did not \
                         run again.",
                    ),
                ),
                (
                    "schema",
                    obj([
                        ("type", text("string")),
                        ("enum", Value::Sequence(vec![text("true")])),
                    ]),
                ),
            ]),
        ));
    }
    if used.retry_after {
        wanted.push((
            "headers",
            RETRY_AFTER_HEADER,
            obj([
                (
                    "description",
                    text("Seconds to wait before retrying the same request with the same key."),
                ),
                (
                    "schema",
                    obj([("type", text("integer")), ("minimum", Value::from(0u64))]),
                ),
            ]),
        ));
    }
    if used.problem {
        wanted.push(("schemas", PROBLEM_SCHEMA, problem_schema(p)));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    if !matches!(root.get("components"), Some(Value::Mapping(_))) {
        root.insert(text("components"), Value::Mapping(Mapping::new()));
    }
    let Some(Value::Mapping(components)) = root.get_mut("components") else {
        return Ok(());
    };
    for (kind, key, value) in wanted {
        if !matches!(components.get(kind), Some(Value::Mapping(_))) {
            components.insert(text(kind), Value::Mapping(Mapping::new()));
        }
        let Some(Value::Mapping(section)) = components.get_mut(kind) else {
            continue;
        };
        match section.get(key) {
            Some(existing) if *existing == value => {}
            Some(_) => {
                return Err(OpenApiError::Collision {
                    path: name.to_owned(),
                    name: format!("components.{kind}.{key}"),
                });
            }
            None => {
                section.insert(text(key), value);
            }
        }
    }
    Ok(())
}

/// The RFC 9457 document the layer answers with (R17).
fn problem_schema(p: &Policy) -> Value {
    let types: Vec<Value> = ProblemKind::ALL
        .iter()
        .map(|k| text(&type_uri(*k, p)))
        .collect();
    let mut statuses: Vec<u16> = ProblemKind::ALL
        .iter()
        .map(|k| status_of(*k, p).as_u16())
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    obj([
        ("type", text("object")),
        (
            "description",
            text(
                "An RFC 9457 problem document from the idempotency layer. Branch on `type`; \
                 `detail` is prose for humans.",
            ),
        ),
        (
            "required",
            Value::Sequence(vec![
                text("type"),
                text("title"),
                text("status"),
                text("detail"),
                text("code"),
            ]),
        ),
        (
            "properties",
            obj([
                (
                    "type",
                    obj([
                        ("type", text("string")),
                        ("format", text("uri")),
                        ("enum", Value::Sequence(types)),
                    ]),
                ),
                ("title", obj([("type", text("string"))])),
                (
                    "status",
                    obj([
                        ("type", text("integer")),
                        (
                            "enum",
                            Value::Sequence(statuses.into_iter().map(Value::from).collect()),
                        ),
                    ]),
                ),
                ("detail", obj([("type", text("string"))])),
                (
                    "code",
                    obj([
                        ("type", text("string")),
                        ("description", text("The fragment of `type` alone.")),
                        (
                            "enum",
                            Value::Sequence(
                                ProblemKind::ALL.iter().map(|k| text(k.slug())).collect(),
                            ),
                        ),
                    ]),
                ),
                (
                    "idempotency_key",
                    obj([
                        ("type", text("string")),
                        ("description", text("The key, echoed when it parsed.")),
                    ]),
                ),
                (
                    "original_status",
                    obj([
                        ("type", text("integer")),
                        (
                            "description",
                            text("For response-not-retained: the status the first request got."),
                        ),
                    ]),
                ),
            ]),
        ),
    ])
}

/// Every rule, first match wins, then the server-wide settings.
fn routes_table(policy: &Policy, routes: &[Route]) -> Value {
    let row = |pattern: &str, origin: &str, p: Option<&Policy>| {
        let mut m = Mapping::new();
        m.insert(text("match"), text(pattern));
        m.insert(text("origin"), text(origin));
        match p {
            None => {
                m.insert(text("enabled"), Value::Bool(false));
            }
            Some(p) => {
                m.insert(text("enabled"), Value::Bool(true));
                m.insert(
                    text("methods"),
                    Value::Sequence(p.methods().iter().map(|m| text(m.as_str())).collect()),
                );
                m.insert(text("require_key"), Value::Bool(p.require_key()));
                m.insert(
                    text("ttl"),
                    text(&humantime::format_duration(p.ttl()).to_string()),
                );
                m.insert(
                    text("on_concurrent"),
                    text(match p.on_concurrent() {
                        OnConcurrent::Conflict => "conflict",
                        OnConcurrent::Wait { .. } => "wait",
                    }),
                );
                m.insert(
                    text("mismatch_status"),
                    Value::from(p.mismatch_status().as_u16()),
                );
            }
        }
        Value::Mapping(m)
    };
    Value::Sequence(
        routes::summary(policy, routes)
            .map(|line| match line.route {
                Some(r) => row(&r.pattern.to_string(), &r.origin, line.policy),
                None => row("/**", "server-wide settings", line.policy),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathPattern;

    fn route(pattern: &str, policy: Option<Policy>) -> Route {
        Route {
            pattern: pattern.parse::<PathPattern>().unwrap(),
            policy,
            origin: "t.toml:1".into(),
        }
    }

    fn rel(route: &str, doc: &str) -> Relation {
        relation(&route_segments(route).unwrap(), &doc_segments(doc))
    }

    #[test]
    fn patterns_against_openapi_paths() {
        assert_eq!(rel("/pets/{id}", "/pets/{petId}"), Relation::Full);
        assert_eq!(rel("/pets/*", "/pets/mine"), Relation::Full);
        assert_eq!(rel("/pets/mine", "/pets/{petId}"), Relation::Partial);
        assert_eq!(rel("/pets/mine", "/pets/yours"), Relation::None);
        assert_eq!(rel("/pets/**", "/pets"), Relation::Full);
        assert_eq!(rel("/pets/**", "/pets/{id}/photos/{n}"), Relation::Full);
        assert_eq!(rel("/pets", "/pets/{id}"), Relation::None);
        assert_eq!(rel("/pets/{id}", "/pets"), Relation::None);
        assert_eq!(rel("/files/*", "/files/{name}.{ext}"), Relation::Full);
    }

    #[test]
    fn templates_name_every_parameter_once() {
        let t = |p: &str| template(&route_segments(p).unwrap());
        assert_eq!(
            t("/a/{id}/b/*"),
            (
                "/a/{id}/b/{p2}".to_owned(),
                vec!["id".to_owned(), "p2".to_owned()]
            )
        );
        assert_eq!(t("/a/{id}/{id}").0, "/a/{id}/{p2}");
        assert_eq!(t("/a/{x y}").0, "/a/{p1}");
    }

    #[test]
    fn replayable_follows_the_cacheable_set() {
        let p = Policy::default();
        assert!(replayable("201", &p));
        assert!(replayable("422", &p));
        assert!(!replayable("409", &p));
        assert!(!replayable("500", &p));
        assert!(replayable("2XX", &p));
        assert!(!replayable("5XX", &p));
        assert!(replayable("default", &p));
    }

    // R3 R9
    #[test]
    fn r09_problems_follow_the_policy() {
        let p = Policy::builder()
            .require_key(true)
            .mismatch_status(StatusCode::BAD_REQUEST)
            .build()
            .unwrap();
        let groups = problems(&p);
        let four_hundred = &groups.iter().find(|(s, _)| *s == 400).unwrap().1;
        assert!(four_hundred.contains(&ProblemKind::MissingKey));
        assert!(four_hundred.contains(&ProblemKind::PayloadMismatch));
        assert!(groups.iter().all(|(s, _)| *s != 422));
        let default = problems(&Policy::default());
        assert!(
            default
                .iter()
                .all(|(_, k)| !k.contains(&ProblemKind::MissingKey))
        );
        // R4: unscoped requests are refused by default, not when passed or shared.
        let has_unscoped = |p: &Policy| {
            problems(p)
                .iter()
                .any(|(_, k)| k.contains(&ProblemKind::UnscopedRequest))
        };
        assert!(has_unscoped(&Policy::default()));
        let pass = Policy::builder().unscoped(Unscoped::Pass).build().unwrap();
        assert!(!has_unscoped(&pass));
        let shared = Policy::builder()
            .scope(idem::core::scope::ScopeSource::none())
            .build()
            .unwrap();
        assert!(!has_unscoped(&shared));
    }

    // R17: with an operator's problem templates, the document shows the shape the
    // client receives (the template's media type and an example filled as idem fills
    // it), the default document for the kinds without one; merged twice, the same.
    #[test]
    fn r17_problem_templates_shape_the_documented_answers() {
        let templates = idem::core::problem::ProblemTemplates::parse(
            r#"{"in-flight": {"content_type": "application/vnd.example+json",
                              "body": {"error": {"code": "{code}", "retry_in": "{retry_after}"}}}}"#,
        )
        .unwrap();
        let p = Policy::builder()
            .problem_templates(templates)
            .build()
            .unwrap();
        let doc = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    post:\n      responses:\n        201: {description: made}\n";
        let (doc, _) = parse("t.yaml", doc).unwrap();
        let once = merge(doc, "t.yaml", &p, &[]).unwrap();
        let responses = &once.doc["paths"]["/pets"]["post"]["responses"];
        let busy = &responses["409"]["content"];
        assert!(
            busy.get(idem::core::problem::CONTENT_TYPE).is_none(),
            "{busy:?}"
        );
        let example = &busy["application/vnd.example+json"]["examples"]["in-flight"]["value"];
        assert_eq!(
            example["error"]["code"],
            Value::from("in-flight"),
            "{busy:?}"
        );
        // The kinds without a template keep the RFC 9457 document.
        let mismatch = &responses["422"]["content"];
        assert!(
            mismatch.get(idem::core::problem::CONTENT_TYPE).is_some(),
            "{mismatch:?}"
        );
        // idem's own answers are never replays, templated or not.
        assert!(
            responses["409"]["headers"]
                .get("Idempotent-Replayed")
                .is_none()
        );
        let twice = merge(once.doc.clone(), "t.yaml", &p, &[]).unwrap();
        assert_eq!(once.doc, twice.doc);
    }

    #[test]
    fn a_merge_twice_is_a_merge_once() {
        let doc = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    post:\n      responses:\n        201: {description: made}\n";
        let (doc, _) = parse("t.yaml", doc).unwrap();
        let routes = [route("GET /nowhere", Some(Policy::default()))];
        let once = merge(doc, "t.yaml", &Policy::default(), &routes).unwrap();
        assert_eq!(
            once.warnings,
            vec!["route 1 `GET /nowhere` (t.toml:1) matches no operation of t.yaml"]
        );
        let twice = merge(once.doc.clone(), "t.yaml", &Policy::default(), &routes).unwrap();
        assert_eq!(once.doc, twice.doc);
        // The YAML integer key `201` got the replay marker, and no second `201`.
        let responses = &once.doc["paths"]["/pets"]["post"]["responses"];
        let made = responses
            .as_mapping()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_u64() == Some(201));
        assert!(
            made.unwrap().1["headers"]
                .get("Idempotent-Replayed")
                .is_some()
        );
        assert!(responses.get("201").is_none());
    }

    #[test]
    fn a_rule_for_some_requests_of_an_operation_is_reported_when_it_differs() {
        let doc = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\nservers: [{url: 'https://api.example.com/{v}', variables: {v: {default: v1}}}]\npaths:\n  /pets/{petId}:\n    post: {responses: {}}\n";
        let (doc, _) = parse("t.yaml", doc).unwrap();
        let required = Policy::builder().require_key(true).build().unwrap();
        let routes = [
            route("POST /v1/pets/special", Some(required)),
            route("/v1/pets/mine", Some(Policy::default())),
        ];
        let out = merge(doc, "t.yaml", &Policy::default(), &routes).unwrap();
        assert_eq!(
            out.warnings,
            vec![
                "route 1 `POST /v1/pets/special` (t.toml:1) matches only some requests of POST \
                 /pets/{petId}, and treats them otherwise; the operation is documented as the \
                 server-wide setting says"
            ]
        );
        let post = &out.doc["paths"]["/pets/{petId}"]["post"];
        assert_eq!(
            post["parameters"][0]["$ref"],
            "#/components/parameters/IdempotencyKey"
        );
    }

    #[test]
    fn foreign_documents_are_one_clear_error() {
        for (text, says) in [
            ("swagger: '2.0'\n", "Swagger 2.0"),
            ("openapi: 2.5.0\n", "only 3.x"),
            ("- a\n- b\n", "not an OpenAPI document"),
            ("title: x\n", "no `openapi: 3.x`"),
        ] {
            let (doc, _) = parse("x.yaml", text).unwrap();
            let err = merge(doc, "x.yaml", &Policy::default(), &[]).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        assert!(parse("x.json", "{\"openapi\": ").is_err());
        assert!(parse("x.yaml", "a: [").is_err());
        let (doc, _) = parse(
            "c.yaml",
            "openapi: 3.1.0\npaths:\n  /a:\n    post: {responses: {}}\ncomponents:\n  schemas:\n    IdemProblem: {type: string}\n",
        )
        .unwrap();
        let err = merge(doc, "c.yaml", &Policy::default(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("components.schemas.IdemProblem"),
            "{err}"
        );
    }
}
