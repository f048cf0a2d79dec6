//! A batch's rows bound as the parameters of multi-row `values` lists.
//!
//! Sent as one JSON text, a batch's rows cost twice: written and escaped on our side, then
//! parsed by SQLite and looked up field by field (`value ->> 'title'` walks the row's keys),
//! which measured 8.7 µs for a session row against 2.4 µs bound. Here each row struct
//! (`SessionRow`, `EventRow`, ...) is taken apart by serde, field by field, straight into
//! the statement's parameters, so the struct stays the one description of a row for both
//! backends (PostgreSQL still reads the JSON).
//!
//! A statement takes its rows as a common table `b` whose columns are the struct's fields:
//! `with b(id, title, ...) as (values (?, ?, ...), ...) update sessions ... from b`. Rows go
//! in chunks whose sizes are powers of two up to [`CHUNK`], so each statement has a handful
//! of texts, each prepared once and kept in the connection's statement cache.

use serde::Serialize;
use serde::ser::{self, Impossible};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments as _, AssertSqlSafe, Sqlite, Transaction};

use crate::backend;
use lapse_core::StoreError;

/// Most rows one statement takes (and so at most 7 texts per statement: 64, 32, ... 1).
/// A session row has 24 fields: 1,536 parameters, well under SQLite's 32,766.
const CHUNK: usize = 64;

/// Up to [`CHUNK`] rows of one shape, bound in order.
pub(super) struct Values {
    columns: Vec<&'static str>,
    args: SqliteArguments,
    rows: usize,
}

impl Values {
    /// The rows' columns, the row struct's fields in order: `id, title, ...`.
    pub(super) fn columns(&self) -> String {
        self.columns.join(", ")
    }

    /// The rows as a `values` list, in order: `(?, ?, ...), (?, ?, ...)`.
    pub(super) fn list(&self) -> String {
        let row = format!("({})", vec!["?"; self.columns.len()].join(", "));
        vec![row.as_str(); self.rows].join(", ")
    }

    /// The common table `b` the rows make: `b(id, title, ...) as (values (?, ...), ...)`.
    pub(super) fn table(&self) -> String {
        format!("b({}) as (values {})", self.columns(), self.list())
    }
}

/// `rows` cut into chunks of powers of two (1,000 rows: fifteen of 64, one of 32, one of 8).
pub(super) fn chunks<T: Serialize>(rows: &[T]) -> Result<Vec<Values>, StoreError> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let size = if rest.len() >= CHUNK {
            CHUNK
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(size);
        let mut values = Values {
            columns: Vec::new(),
            args: SqliteArguments::default(),
            rows: 0,
        };
        for row in chunk {
            row.serialize(RowSink(&mut values))
                .map_err(|e| StoreError::Backend(format!("a batch row cannot be bound: {e}")))?;
            values.rows += 1;
        }
        out.push(values);
        rest = tail;
    }
    Ok(out)
}

/// Runs the statement `sql` writes for each chunk of `rows` (see [`Values`]).
pub(super) async fn execute<T: Serialize>(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[T],
    sql: impl Fn(&Values) -> String,
) -> Result<(), StoreError> {
    for values in chunks(rows)? {
        sqlx::query_with(AssertSqlSafe(sql(&values)), values.args)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Runs the statement `sql` writes for each chunk of `rows` (as [`execute`]), for the one
/// text it selects: one per chunk.
pub(super) async fn select_text<T: Serialize>(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[T],
    sql: impl Fn(&Values) -> String,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for values in chunks(rows)? {
        let text: String = sqlx::query_scalar_with(AssertSqlSafe(sql(&values)), values.args)
            .fetch_one(&mut **tx)
            .await
            .map_err(backend)?;
        out.push(text);
    }
    Ok(out)
}

/// Why a row could not be bound: a field of a shape no column takes (a list, a map).
#[derive(Debug)]
struct Unbindable(String);

impl std::fmt::Display for Unbindable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unbindable {}

impl ser::Error for Unbindable {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Unbindable(msg.to_string())
    }
}

fn unbindable<T>(what: &str) -> Result<T, Unbindable> {
    Err(Unbindable(format!("a {what} is not a column value")))
}

/// Takes a row struct: its fields become the next parameters, and the first row's field
/// names the columns.
struct RowSink<'a>(&'a mut Values);

impl ser::SerializeStruct for RowSink<'_> {
    type Ok = ();
    type Error = Unbindable;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unbindable> {
        if self.0.rows == 0 {
            self.0.columns.push(key);
        }
        value.serialize(FieldSink(&mut self.0.args))
    }

    fn end(self) -> Result<(), Unbindable> {
        Ok(())
    }
}

/// Binds one value; `Err` for anything but texts, integers, booleans and nulls.
struct FieldSink<'a>(&'a mut SqliteArguments);

impl FieldSink<'_> {
    fn add<T>(self, value: T) -> Result<(), Unbindable>
    where
        T: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.0
            .add(value)
            .map_err(|e| Unbindable(format!("a value did not encode: {e}")))
    }
}

macro_rules! bind_as_i64 {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), Unbindable> {
            self.add(i64::from(v))
        })*
    };
}

macro_rules! unbindable {
    ($($method:ident($($arg:ty),*) -> $ok:ty: $what:literal),*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, Unbindable> {
            unbindable($what)
        })*
    };
}

impl<'a> ser::Serializer for RowSink<'a> {
    type Ok = ();
    type Error = Unbindable;
    type SerializeSeq = Impossible<(), Unbindable>;
    type SerializeTuple = Impossible<(), Unbindable>;
    type SerializeTupleStruct = Impossible<(), Unbindable>;
    type SerializeTupleVariant = Impossible<(), Unbindable>;
    type SerializeMap = Impossible<(), Unbindable>;
    type SerializeStruct = RowSink<'a>;
    type SerializeStructVariant = Impossible<(), Unbindable>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<RowSink<'a>, Unbindable> {
        Ok(self)
    }

    unbindable!(
        serialize_bool(bool) -> (): "boolean row",
        serialize_i8(i8) -> (): "number row",
        serialize_i16(i16) -> (): "number row",
        serialize_i32(i32) -> (): "number row",
        serialize_i64(i64) -> (): "number row",
        serialize_u8(u8) -> (): "number row",
        serialize_u16(u16) -> (): "number row",
        serialize_u32(u32) -> (): "number row",
        serialize_u64(u64) -> (): "number row",
        serialize_f32(f32) -> (): "number row",
        serialize_f64(f64) -> (): "number row",
        serialize_char(char) -> (): "character row",
        serialize_str(&str) -> (): "text row",
        serialize_bytes(&[u8]) -> (): "bytes row",
        serialize_none() -> (): "missing row",
        serialize_unit() -> (): "unit row",
        serialize_unit_struct(&'static str) -> (): "unit row",
        serialize_unit_variant(&'static str, u32, &'static str) -> (): "variant row",
        serialize_seq(Option<usize>) -> Self::SerializeSeq: "list row",
        serialize_tuple(usize) -> Self::SerializeTuple: "tuple row",
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct: "tuple row",
        serialize_tuple_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeTupleVariant: "variant row",
        serialize_map(Option<usize>) -> Self::SerializeMap: "map row",
        serialize_struct_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeStructVariant: "variant row"
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unbindable> {
        unbindable("optional row")
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unbindable> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unbindable> {
        unbindable("variant row")
    }
}

impl ser::Serializer for FieldSink<'_> {
    type Ok = ();
    type Error = Unbindable;
    type SerializeSeq = Impossible<(), Unbindable>;
    type SerializeTuple = Impossible<(), Unbindable>;
    type SerializeTupleStruct = Impossible<(), Unbindable>;
    type SerializeTupleVariant = Impossible<(), Unbindable>;
    type SerializeMap = Impossible<(), Unbindable>;
    type SerializeStruct = Impossible<(), Unbindable>;
    type SerializeStructVariant = Impossible<(), Unbindable>;

    bind_as_i64!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_bool: bool
    );

    fn serialize_i64(self, v: i64) -> Result<(), Unbindable> {
        self.add(v)
    }

    fn serialize_u64(self, v: u64) -> Result<(), Unbindable> {
        match i64::try_from(v) {
            Ok(v) => self.add(v),
            Err(_) => unbindable("number past 2^63"),
        }
    }

    fn serialize_str(self, v: &str) -> Result<(), Unbindable> {
        self.add(std::sync::Arc::<str>::from(v))
    }

    fn serialize_none(self) -> Result<(), Unbindable> {
        self.add(Option::<i64>::None)
    }

    fn serialize_unit(self) -> Result<(), Unbindable> {
        self.serialize_none()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Unbindable> {
        v.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unbindable> {
        v.serialize(self)
    }

    unbindable!(
        serialize_f32(f32) -> (): "fraction",
        serialize_f64(f64) -> (): "fraction",
        serialize_char(char) -> (): "character",
        serialize_bytes(&[u8]) -> (): "byte string",
        serialize_unit_struct(&'static str) -> (): "unit struct",
        serialize_unit_variant(&'static str, u32, &'static str) -> (): "enum variant",
        serialize_seq(Option<usize>) -> Self::SerializeSeq: "list",
        serialize_tuple(usize) -> Self::SerializeTuple: "tuple",
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct: "tuple",
        serialize_tuple_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeTupleVariant: "enum variant",
        serialize_map(Option<usize>) -> Self::SerializeMap: "map",
        serialize_struct(&'static str, usize) -> Self::SerializeStruct: "struct",
        serialize_struct_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeStructVariant: "enum variant"
    );

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unbindable> {
        unbindable("enum variant")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row<'a> {
        id: &'a str,
        n: i64,
        flag: bool,
        gone: Option<&'a str>,
    }

    #[test]
    fn rows_become_chunks_of_powers_of_two_named_by_their_fields() {
        let rows: Vec<Row> = (0..100)
            .map(|n| Row {
                id: "s",
                n,
                flag: n % 2 == 0,
                gone: None,
            })
            .collect();
        let chunks = chunks(&rows).unwrap();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.rows).collect();
        assert_eq!(sizes, [64, 32, 4]);
        assert_eq!(
            chunks[2].table(),
            "b(id, n, flag, gone) as (values (?, ?, ?, ?), (?, ?, ?, ?), (?, ?, ?, ?), \
             (?, ?, ?, ?))"
        );
        use sqlx::Arguments as _;
        assert_eq!(chunks[0].args.len(), 64 * 4);
    }

    #[test]
    fn a_field_no_column_takes_is_refused() {
        #[derive(Serialize)]
        struct Listy {
            tags: Vec<&'static str>,
        }
        let err = chunks(&[Listy { tags: vec!["a"] }]).err().unwrap();
        assert!(err.to_string().contains("list"), "{err}");
    }
}
