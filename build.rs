//! Compiles the Manage family's `.proto` file into Rust types with a pure-Rust protobuf compiler
//! (no `protoc`, no network).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["gatehouse/manage/v2/manage.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    for message in [
        ".gatehouse.manage.v2.Error",
        ".gatehouse.manage.v2.Warning",
        ".gatehouse.manage.v2.User",
        ".gatehouse.manage.v2.ValidateOtpResponse",
        ".gatehouse.manage.v2.Response",
    ] {
        config.type_attribute(
            message,
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\")]",
        );
    }
    for message in [
        ".gatehouse.manage.v2.SendOtpRequest",
        ".gatehouse.manage.v2.ValidateOtpRequest",
    ] {
        // Every field is required in JSON (a missing one is a 400, not an empty string), and
        // nothing else is accepted (a misspelt field is a 400, not an ignored one).
        config.type_attribute(
            message,
            "#[derive(serde::Deserialize)] #[serde(rename_all = \"camelCase\", deny_unknown_fields)]",
        );
    }
    config.field_attribute(
        ".gatehouse.manage.v2.ValidateOtpResponse.user",
        "#[serde(default, skip_serializing_if = \"Option::is_none\")]",
    );
    // The seed spells this one field with an upper-case acronym.
    config.field_attribute(
        ".gatehouse.manage.v2.User.latest_invite_uuid",
        "#[serde(rename = \"latestInviteUUID\")]",
    );
    config.compile_fds(files)?;
    Ok(())
}
