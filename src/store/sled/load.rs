//! The view loaded at open: tokens and accounts from sled, users from the
//! view checkpoint when it is right for sled's trees, else from sled.

use super::{
    Trees, checkpoint, decoded,
    keys::{ACCOUNTS, TOKENS, backend},
    watermark::StoreId,
};
use crate::store::{
    StoreError,
    codec::{self, USERS},
    view::{Builder, UserFields, View},
};

/// The view of what `trees` hold, as of `revision`, with its users from
/// `found`, the view checkpoint taken at this start, if it is right for
/// these trees (sled's store id and audit sequence number are `sled`);
/// otherwise, with a warning saying why, from sled (`load_view`). Returns
/// whether the checkpoint was used.
pub(super) fn load_view_from(
    trees: &Trees,
    revision: u64,
    found: Result<checkpoint::Found, String>,
    sled: (&StoreId, u64),
) -> Result<(View, bool), StoreError> {
    let (id, audit_seq) = sled;
    let mut view = builder(trees, revision)?;
    let loaded = found.and_then(|found| {
        found.matches(id, revision, audit_seq)?;
        found.users(|key, value| add_user(&mut view, key, value))
    });
    match loaded {
        Ok(()) => Ok((view.finish(), true)),
        Err(reason) => {
            drop(view);
            tracing::warn!(
                %reason,
                "view checkpoint `{}` not used; reading the view from sled",
                checkpoint::FILE
            );
            Ok((load_view(trees, revision)?, false))
        }
    }
}

/// The view of what `trees` hold, as of `revision`.
pub(super) fn load_view(trees: &Trees, revision: u64) -> Result<View, StoreError> {
    let mut view = builder(trees, revision)?;
    for item in trees.users.iter() {
        let (key, value) = item.map_err(backend)?;
        add_user(&mut view, &key, &value)?;
    }
    Ok(view.finish())
}

/// A view of `trees`' tokens and accounts, awaiting its users.
fn builder(trees: &Trees, revision: u64) -> Result<Builder, StoreError> {
    Builder::new(
        revision,
        decoded(&trees.tokens, TOKENS),
        decoded(&trees.accounts, ACCOUNTS),
    )
}

/// One user record, as sled holds it, decoded in place straight into the
/// view (a million of them is most of a start).
fn add_user(view: &mut Builder, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let user = codec::decode_user(USERS, key, value)?;
    view.user(UserFields {
        account_id: user.account_id,
        id: user.id,
        display_name: user.display_name,
        edition: user.edition,
        tier: user.tier,
        revision: user.revision,
        created_at: user.created_at,
        updated_at: user.updated_at,
        supervisor_scope: user.supervisor_scope.as_ref(),
    })
}
