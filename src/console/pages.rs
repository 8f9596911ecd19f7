//! The console's pages: HTML shells, one stylesheet and one script, all
//! compiled into the binary (`include_str!`). The pages draw themselves
//! from the JSON API and poll it; the server puts no data into the HTML.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const LINE: &str = include_str!("assets/line.html");
const MACHINE: &str = include_str!("assets/machine.html");
const ORDERS: &str = include_str!("assets/orders.html");
const GATEWAY: &str = include_str!("assets/gateway.html");
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub async fn line() -> Html<&'static str> {
    Html(LINE)
}

pub async fn machine() -> Html<&'static str> {
    Html(MACHINE)
}

pub async fn orders() -> Html<&'static str> {
    Html(ORDERS)
}

pub async fn gateway() -> Html<&'static str> {
    Html(GATEWAY)
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}
