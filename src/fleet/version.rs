//! The oldest Redis the store runs on, checked when the store connects (and again after a
//! Sentinel failover, which connects anew). A server too old fails some commands only (the
//! fleet's wake-up reader takes `LPOP` with a count, Redis 6.2): without the check the fleet
//! would half work, with errors that do not say why.

/// Redis 6.2: `LPOP key count`. Every other command and script the store sends runs on it.
pub const OLDEST: (u32, u32) = (6, 2);

/// The `redis_version` of an `INFO server` answer, as (major, minor, patch); `None` when the
/// answer names none (a server that only speaks the protocol).
pub fn of(info: &str) -> Option<(u32, u32, u32)> {
    let v = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("redis_version:"))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// `Err` with what to do when `info` names a Redis older than [`OLDEST`]; a server that
/// names no version is taken at its word that it speaks Redis.
pub fn check(info: &str) -> Result<(), String> {
    match of(info) {
        Some((major, minor, patch)) if (major, minor) < OLDEST => Err(format!(
            "Redis {major}.{minor}.{patch} is too old: the session store needs Redis {}.{} or later",
            OLDEST.0, OLDEST.1
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str) -> String {
        format!("# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\nos:Linux\r\n")
    }

    #[test]
    fn versions_are_read_from_info_server() {
        assert_eq!(of(&info("7.0.15")), Some((7, 0, 15)));
        assert_eq!(of(&info("6.2")), Some((6, 2, 0)));
        assert_eq!(of(&info("255.255.255")), Some((255, 255, 255)));
        assert_eq!(of("# Server\r\nos:Linux\r\n"), None);
        assert_eq!(of(&info("x.1")), None);
    }

    #[test]
    fn only_a_server_older_than_6_2_is_refused() {
        for ok in ["6.2.0", "6.2.14", "7.0.15", "7.2.4", "8.0.2", "10.0.0"] {
            assert_eq!(check(&info(ok)), Ok(()), "{ok}");
        }
        assert_eq!(check("# Server\r\n"), Ok(()));
        for old in ["6.0.16", "5.0.7", "4.0.9", "2.8.4"] {
            let e = check(&info(old)).unwrap_err();
            assert!(e.contains(old) && e.contains("6.2 or later"), "{e}");
        }
    }
}
