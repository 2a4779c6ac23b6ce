//! The sign-in page.

use maud::{Markup, html};

use super::{Chrome, FieldError, field_error};

/// The form; the token field is always empty (a refused token is not
/// shown again).
pub fn page(csrf: &str, notice: Option<&str>, error: Option<&str>) -> Markup {
    let errors: Vec<FieldError> = error
        .map(|m| FieldError {
            target: "token".to_owned(),
            message: m.to_owned(),
        })
        .into_iter()
        .collect();
    let described = if error.is_some() {
        "token-hint token-error"
    } else {
        "token-hint"
    };
    super::page(
        &Chrome::default(),
        "Sign in",
        &errors,
        html! {
            h1 { "Sign in to the admin console" }
            @if let Some(notice) = notice {
                div class="notice" role="status" { p { (notice) } }
            }
            form method="post" action="/sign-in" novalidate {
                input type="hidden" name="csrf" value=(csrf);
                div class=(if error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="token" { "API token" }
                    p class="hint" id="token-hint" {
                        "Operators and account admins may sign in, with the token an operator gave them. "
                        "Gateway and provisioner tokens are for systems, not people."
                    }
                    (field_error("token", error))
                    input class="input" type="password" id="token" name="token"
                        autocomplete="off" spellcheck="false" aria-describedby=(described);
                }
                button type="submit" class="button" { "Sign in" }
            }
        },
    )
}
