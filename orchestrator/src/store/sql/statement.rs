//! Raw SQL written once with `?` placeholders, rendered for the connected backend.

use sea_orm::{DbBackend, Statement, Value};

/// Builds a statement, turning `?` into `$1, $2, ...` for PostgreSQL.
/// The SQL must contain no `?` other than placeholders.
pub(super) fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => numbered(sql),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_for_postgres_only() {
        let pg = stmt(DbBackend::Postgres, "a = ? AND b IN (?, ?)", vec![1.into(), 2.into(), 3.into()]);
        assert_eq!(pg.sql, "a = $1 AND b IN ($2, $3)");
        let lite = stmt(DbBackend::Sqlite, "a = ?", vec![1.into()]);
        assert_eq!(lite.sql, "a = ?");
    }
}
