//! The Manage family's messages, generated at build time from
//! `proto/gatehouse/manage/v2/manage.proto`. The same types encode both protobuf and JSON answers.

include!(concat!(env!("OUT_DIR"), "/gatehouse.manage.v2.rs"));

impl From<&crate::store::User> for User {
    fn from(u: &crate::store::User) -> User {
        User {
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            user_name: u.user_name.clone(),
            email: u.email.clone(),
            phone: u.phone.clone(),
            text_number: u.text_number.clone(),
            nick_name: u.nick_name.clone(),
            uuid: u.uuid.clone(),
            password_expires: u.password_expires.clone(),
            force_password_change: u.force_password_change,
            latest_invite_status: u.latest_invite_status.clone(),
            latest_invite_date: u.latest_invite_date.clone(),
            latest_invite_uuid: u.latest_invite_uuid.clone(),
            is_valid: u.is_valid,
            last_login_timestamp: u.last_login_timestamp.clone(),
            user_rollout_stage: u.user_rollout_stage.clone(),
        }
    }
}
