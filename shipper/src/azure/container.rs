//! Creating a container (`hrl-shipper init` creates the repository's
//! container when missing; restore and standby create a VHD container).

use super::auth::Account;
use super::request::{client, send, unexpected, Req};
use crate::error::Result;

/// Creates `container` if it does not exist. Returns true when created.
pub async fn create_container(container: &str) -> Result<bool> {
    let acct = Account::from_env("creating a container")?;
    create_in(&client(), &acct, container).await
}

/// [`create_container`] with a given client and account.
pub async fn create_in(http: &reqwest::Client, acct: &Account, container: &str) -> Result<bool> {
    let url = acct.url(container, None);
    let r = Req::new(reqwest::Method::PUT, url).query("restype=container");
    let what = format!("create container {container}");
    let a = send(http, acct, &r, &what).await?;
    match a.status {
        201 => Ok(true),
        409 => Ok(false),
        _ => Err(unexpected(&what, &a)),
    }
}
