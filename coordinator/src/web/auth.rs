//! Web authentication: the login form exchanges the coordinator token for a random session id in
//! an `HttpOnly; SameSite=Strict` cookie (the token itself never lands in the browser's storage);
//! scripts and tools may send `Authorization: Bearer <token>` instead. Steering requests also need
//! the `x-nnunet-steer: 1` header, which a cross-site form cannot set.
use super::model::{Access, TokenCheck};
use std::collections::HashMap;
use std::sync::Mutex;

pub const COOKIE: &str = "nnunet_session";
/// Sessions last 12 hours.
const SESSION_MS: i64 = 12 * 3600 * 1000;
/// At most this many live sessions (the oldest go first).
const MAX_SESSIONS: usize = 1024;

pub struct Sessions {
    by_id: Mutex<HashMap<String, (Access, i64)>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { by_id: Mutex::new(HashMap::new()) }
    }
}

impl Sessions {
    /// A new session for a valid token; its id (256 random bits, hex).
    pub fn create(&self, access: Access, now_ms: i64) -> String {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        let id = hex::encode(b);
        let mut m = self.by_id.lock().unwrap();
        m.retain(|_, (_, exp)| *exp > now_ms);
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        m.insert(id.clone(), (access, now_ms + SESSION_MS));
        id
    }

    pub fn get(&self, id: &str, now_ms: i64) -> Option<Access> {
        let m = self.by_id.lock().unwrap();
        m.get(id).filter(|(_, exp)| *exp > now_ms).map(|(a, _)| *a)
    }

    pub fn remove(&self, id: &str) {
        self.by_id.lock().unwrap().remove(id);
    }
}

/// The value of cookie `name` in a `Cookie:` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// Who is asking: a session cookie or a bearer token; `None` when neither is valid.
pub fn identify(headers: &hyper::HeaderMap, tokens: &dyn TokenCheck, sessions: &Sessions, now_ms: i64) -> Option<Access> {
    if tokens.open() {
        return Some(Access { can_steer: true });
    }
    if let Some(t) = headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        return tokens.check(t.trim());
    }
    let c = headers.get_all(hyper::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|h| cookie(h, COOKIE))?;
    sessions.get(c, now_ms)
}

/// The session id in the request's cookie, if any.
pub fn session_id(headers: &hyper::HeaderMap) -> Option<String> {
    headers.get_all(hyper::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|h| cookie(h, COOKIE)).map(str::to_string)
}

pub fn set_cookie(id: &str, secure: bool) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}", SESSION_MS / 1000, if secure { "; Secure" } else { "" })
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Decodes one field of an `application/x-www-form-urlencoded` body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let raw = s.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))?;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())?;
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::model::StaticTokens;

    #[test]
    fn cookie_and_form_parsing() {
        assert_eq!(cookie("a=1; nnunet_session=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie("nnunet_sessionx=abc", COOKIE), None);
        assert_eq!(form_field(b"token=ab%2Bc+d&x=1", "token").as_deref(), Some("ab+c d"));
        assert_eq!(form_field(b"token=%zz", "token"), None);
        assert_eq!(form_field(b"token=%4", "token"), None);
        assert_eq!(form_field(b"other=1", "token"), None);
    }

    #[test]
    fn sessions_and_bearer() {
        let tokens = StaticTokens::single("tok-0123456789abcdef".into());
        let s = Sessions::default();
        let id = s.create(Access { can_steer: true }, 0);
        let mut h = hyper::HeaderMap::new();
        assert_eq!(identify(&h, &tokens, &s, 1), None);
        h.insert(hyper::header::COOKIE, format!("{COOKIE}={id}").parse().unwrap());
        assert_eq!(identify(&h, &tokens, &s, 1), Some(Access { can_steer: true }));
        assert_eq!(identify(&h, &tokens, &s, SESSION_MS + 1), None, "sessions expire");
        h.insert(hyper::header::COOKIE, format!("{COOKIE}=forged").parse().unwrap());
        assert_eq!(identify(&h, &tokens, &s, 1), None);
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::AUTHORIZATION, "Bearer tok-0123456789abcdef".parse().unwrap());
        assert!(identify(&h, &tokens, &s, 1).is_some());
        h.insert(hyper::header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(identify(&h, &tokens, &s, 1), None);
        s.remove(&id);
        assert_eq!(s.get(&id, 1), None);
    }
}
