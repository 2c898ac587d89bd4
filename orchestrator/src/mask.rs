//! Masking of phone numbers for logs.

/// Keeps the leading `+` and country digit and the last four digits:
/// `+15551234567` becomes `+1******4567`. Short inputs are masked whole.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    let lead = if chars.first() == Some(&'+') { 2 } else { 1 };
    if chars.len() <= lead + 4 {
        return "*".repeat(chars.len());
    }
    let mut masked = String::with_capacity(chars.len());
    masked.extend(&chars[..lead]);
    masked.extend(std::iter::repeat_n('*', chars.len() - lead - 4));
    masked.extend(&chars[chars.len() - 4..]);
    masked
}

#[cfg(test)]
mod tests {
    use super::mask_phone;

    #[test]
    fn masks_all_but_country_and_last_four() {
        assert_eq!(mask_phone("+15551234567"), "+1******4567");
        assert_eq!(mask_phone("15551234567"), "1******4567");
        assert_eq!(mask_phone("+1234"), "*****");
    }
}
