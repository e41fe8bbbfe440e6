//! `/demo/…`: a tiny made-up customer portal that Flywheel serves itself,
//! so the example browser workflow works offline, on any machine, in the
//! first minute. No key needed: it holds nothing real.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const LOGIN: &str = include_str!("../demo/login.html");
const INVOICES: &str = include_str!("../demo/invoices.html");
const CSV: &str = "number,customer,due,total\nINV-1042,Globex,2026-12-15,1280.00\nINV-1041,Initech,2026-12-10,349.90\n\
INV-1040,Globex,2026-11-30,915.50\nINV-1039,Umbrella,2026-11-28,4020.00\nINV-1038,Initech,2026-11-20,77.25\n";

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

pub async fn login() -> Response {
    html(LOGIN)
}

pub async fn invoices() -> Response {
    html(INVOICES)
}

pub async fn invoices_csv() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"invoices.csv\""),
        ],
        CSV,
    )
        .into_response()
}
