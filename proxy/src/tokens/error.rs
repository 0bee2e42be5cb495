//! Why a token was refused.

/// Why a token was refused. Each message is written once, in
/// [`TokenError::detail`]; it is static, so the 401 path does not allocate
/// for it, and `Display` shows the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    TooLarge,
    WrongType,
    UnknownKey,
    AlgorithmNotAllowed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    BadClaims,
    Revoked,
    /// The header lists critical extensions (`crit`, RFC 7515 §4.1.11);
    /// tether understands none, so it must refuse the token.
    CriticalHeader,
    /// `exp − iat` exceeds the configured lifetime plus the leeway: a
    /// validly signed token that should never have been minted.
    LifetimeTooLong,
}

impl TokenError {
    /// The message: the `detail` of a 401 answer.
    pub fn detail(self) -> &'static str {
        match self {
            TokenError::Missing => "no bearer token",
            TokenError::Malformed => "token is not a JWT (three base64url segments)",
            TokenError::TooLarge => "token is too large",
            TokenError::WrongType => "token type is wrong for this use",
            TokenError::UnknownKey => "token key id is unknown",
            TokenError::AlgorithmNotAllowed => "token algorithm is not allowed for its key",
            TokenError::BadSignature => "token signature is invalid",
            TokenError::Expired => "token has expired",
            TokenError::NotYetValid => "token is not valid yet",
            TokenError::WrongIssuer => "token issuer is wrong",
            TokenError::WrongAudience => "token audience is wrong",
            TokenError::BadClaims => "token claims are missing or malformed",
            TokenError::Revoked => "token has been revoked",
            TokenError::CriticalHeader => "token header lists critical extensions (crit)",
            TokenError::LifetimeTooLong => "token lifetime is longer than this server allows",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for TokenError {}

pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::WrongIssuer,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
        K::MissingRequiredClaim(_) | K::Json(_) | K::InvalidSubject => TokenError::BadClaims,
        K::InvalidToken | K::Base64(_) | K::Utf8(_) => TokenError::Malformed,
        _ => TokenError::BadClaims,
    }
}
