//! The support articles' procedure, walked in a real browser (headless
//! Chromium over WebDriver): sign in as an account admin, Users, Edit,
//! Services and permissions, choose, Save; and what must be refused on the
//! way. Each step's screenshot is in `target/console-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;
mod console_support;

use common::T;
use console_support::{World, browser::Driver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_admin_walks_users_edit_services_and_save() {
    let Some(driver) = Driver::start("an_account_admin_walks_users_edit_services_and_save").await
    else {
        return;
    };
    let w = World::new().await;
    let mut b = driver.browser("walk-through", true).await;

    // Sign in as an account admin.
    b.goto(&format!("{}/", w.base)).await;
    assert_eq!(b.heading().await, "Sign in to the admin console");
    b.fill("API token", &w.admin).await;
    b.shot("sign-in").await;
    b.press("Sign in").await;

    // Users: the account's users, never another account's.
    assert_eq!(b.heading().await, "Users");
    let users = b.text().await;
    assert!(
        users.contains("Ada Lovelace") && users.contains("ann (you)"),
        "{users}"
    );
    assert!(
        !users.contains("Gus Globex"),
        "another account's user is listed"
    );
    b.shot("users").await;

    // Edit → Services and permissions.
    b.edit_row("ada").await;
    assert_eq!(b.heading().await, "Edit user: Ada Lovelace");
    b.shot("edit-user").await;
    b.follow("Services and permissions").await;
    assert_eq!(b.heading().await, "Services and permissions");
    assert!(!b.enabled("Analytics Essentials").await, "no licence yet");
    assert!(
        b.description("Analytics Essentials")
            .await
            .contains("Needs an edition licence")
    );
    b.shot("services").await;

    // X8 and Supervisor Analytics, Save.
    b.choose("Edition licence", "X8").await;
    assert!(
        b.enabled("Supervisor Analytics").await,
        "the script follows the edition"
    );
    b.check("Supervisor Analytics").await;
    b.shot("x8-supervisor-chosen").await;
    b.press("Save").await;
    let saved = b.text().await;
    assert!(
        saved.contains("Saved: X8 with Supervisor Analytics."),
        "{saved}"
    );
    assert!(
        saved.contains("Shown on the user's application panel"),
        "{saved}"
    );
    b.shot("saved").await;
    // What a dashboard gateway now hears over gRPC.
    assert_eq!(w.gateway_tier("acme", "ada").await, T::Supervisor as i32);

    // Lower the licence to X2: the script moves the choice down, Save
    // lowers Supervisor to Essentials with the notice.
    b.choose("Edition licence", "X2").await;
    assert!(!b.enabled("Supervisor Analytics").await);
    assert!(b.selected("Analytics Essentials").await);
    assert!(
        b.description("Supervisor Analytics")
            .await
            .contains("Not included in X2")
    );
    b.shot("x2-chosen").await;
    b.press("Save").await;
    let lowered = b.text().await;
    assert!(
        lowered.contains("Supervisor Analytics was lowered to Analytics Essentials"),
        "{lowered}"
    );
    b.shot("x2-lowered-notice").await;
    assert_eq!(w.gateway_tier("acme", "ada").await, T::Essentials as i32);
    // On X2, Supervisor cannot be chosen, and the page says why.
    assert!(!b.enabled("Supervisor Analytics").await);
    assert!(
        b.description("Supervisor Analytics")
            .await
            .contains("Not included in X2: needs X4, X5, X6, X7, X8 or X8e")
    );

    // One's own user: refused, with the reason, and no Save.
    b.follow("Users").await;
    b.edit_row("ann").await;
    b.follow("Services and permissions").await;
    let own = b.text().await;
    assert!(own.contains("You cannot change your own services"), "{own}");
    assert!(!b.has_button("Save").await);
    assert!(!b.enabled("Edition licence").await);
    b.shot("own-user-refused").await;

    // A change over gRPC between opening and saving: a conflict, the fresh
    // values shown, nothing overwritten.
    b.follow("Users").await;
    b.edit_row("ada").await;
    b.follow("Services and permissions").await;
    w.app
        .set("acme", "ada", Some("X8"), None)
        .await
        .expect("a provisioning system changes ada");
    b.check("None, do not allow access").await;
    b.press("Save").await;
    let conflict = b.text().await;
    assert!(
        conflict.contains("Someone else changed this user's services"),
        "{conflict}"
    );
    assert_eq!(
        b.field("Edition licence")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("X8"),
        "the fresh values are shown"
    );
    b.shot("conflict").await;
    assert_eq!(
        w.services("acme", "ada").await,
        ("X8".to_owned(), T::Essentials as i32),
        "nothing was overwritten"
    );

    // Another account's user: not listed, and a typed URL is refused.
    b.goto(&format!("{}/accounts/globex/users/gus/services", w.base))
        .await;
    let refused = b.text().await;
    assert!(refused.contains("You may not see this page"), "{refused}");
    assert!(!refused.contains("Gus Globex"));
    b.shot("other-account-refused").await;
    b.goto(&format!("{}/accounts/globex/users", w.base)).await;
    assert!(b.text().await.contains("You may not see this page"));

    // The audit trail shows the console's writes as such.
    b.goto(&format!("{}/accounts/acme/audit", w.base)).await;
    let audit = b.text().await;
    assert!(
        audit.contains("CONSOLE") || audit.contains("console"),
        "{audit}"
    );
    b.shot("audit").await;

    // Sign out (a button: a POST with the session's CSRF token).
    b.press("Sign out").await;
    assert!(b.text().await.contains("You have signed out."));
    b.goto(&format!("{}/accounts/acme/users", w.base)).await;
    assert_eq!(b.heading().await, "Sign in to the admin console");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_procedure_works_with_javascript_off() {
    let Some(driver) = Driver::start("the_procedure_works_with_javascript_off").await else {
        return;
    };
    let w = World::new().await;
    // bob holds X8 with Analytics Essentials; a second user with Supervisor.
    w.app
        .set("acme", "bob", Some("X8"), Some(T::Essentials))
        .await
        .unwrap();
    w.app
        .set("acme", "ada", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    let mut b = driver.browser("javascript-off", false).await;
    b.goto(&format!("{}/sign-in", w.base)).await;
    b.fill("API token", &w.admin).await;
    b.press("Sign in").await;

    // Supervisor on X2, chosen together on a page showing X8: refused
    // beside the analytics field, the choice kept, nothing changed.
    b.edit_row("bob").await;
    b.follow("Services and permissions").await;
    b.choose("Edition licence", "X2").await;
    assert!(
        b.enabled("Supervisor Analytics").await,
        "without the script the radios stay as rendered"
    );
    b.check("Supervisor Analytics").await;
    b.press("Save").await;
    let refused = b.text().await;
    assert!(refused.contains("There is a problem"), "{refused}");
    assert!(
        refused.contains("X2 does not include Supervisor Analytics"),
        "{refused}"
    );
    assert!(refused.contains("Nothing was changed"), "{refused}");
    b.shot("supervisor-on-x2-refused").await;
    assert_eq!(
        w.services("acme", "bob").await,
        ("X8".to_owned(), T::Essentials as i32)
    );

    // Lowering the licence alone, Supervisor still shown as chosen: rule 6
    // lowers it to Essentials, with the notice.
    b.follow("Users").await;
    b.edit_row("ada").await;
    b.follow("Services and permissions").await;
    b.choose("Edition licence", "X2").await;
    assert!(b.selected("Supervisor Analytics").await);
    b.press("Save").await;
    let lowered = b.text().await;
    assert!(
        lowered.contains("Supervisor Analytics was lowered to Analytics Essentials"),
        "{lowered}"
    );
    b.shot("x2-lowered-without-javascript").await;
    assert_eq!(
        w.services("acme", "ada").await,
        ("X2".to_owned(), T::Essentials as i32)
    );

    // Add a user and remove it, with the confirmation.
    b.follow("Users").await;
    b.follow("Add a user").await;
    b.fill("User ID", "cy").await;
    b.fill("Display name", "Cy Young").await;
    b.press("Add user").await;
    assert_eq!(b.heading().await, "Edit user: Cy Young");
    b.follow("Remove user").await;
    b.shot("remove-confirmation").await;
    b.press("Yes, remove user").await;
    assert!(b.text().await.contains("User cy was removed."));
    assert_eq!(
        w.app.get_user("acme", "cy").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    b.close().await;
}
