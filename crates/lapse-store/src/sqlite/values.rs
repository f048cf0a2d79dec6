//! A batch's rows bound as the parameters of multi-row `values` lists.
//!
//! Sent as one JSON text, a batch's rows cost twice: written and escaped on our side, then
//! parsed by SQLite and looked up field by field (`value ->> 'title'` walks the row's keys),
//! which measured 8.7 µs for a session row against 2.4 µs bound. Here each row struct
//! (`SessionRow`, `EventRow`, ...) is taken apart by serde, field by field, straight into
//! the statement's parameters, so the struct stays the one description of a row for both
//! backends (PostgreSQL still reads the JSON).
//!
//! A statement takes its rows as a common table `b` whose columns are a row number `pos`
//! and then the struct's fields (none of which may be named `pos`):
//! `with b(pos, id, title, ...) as (values (?, ?, ?, ...), ...) update sessions ... from b`.
//! Rows go in chunks of [`LARGE`] rows, or [`SMALL`] for the last few, and a chunk's unused
//! rows are all nulls (`pos is null`, which every statement skips): so each statement has
//! two texts, each prepared once and kept in the connection's statement cache, and a sweep's
//! page of 1,000 rows takes four statements of each kind.

use serde::Serialize;
use serde::ser::{self, Impossible};
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Arguments as _, AssertSqlSafe, Sqlite, Transaction};

use crate::backend;
use lapse_core::StoreError;

/// Rows of a full chunk. A session row has 24 fields: 6,400 parameters, well under
/// SQLite's 32,766.
const LARGE: usize = 256;
/// Rows of a chunk for what is left when that is no more than [`SMALL_UP_TO`] rows (a group
/// commit's few changes; a page's last rows), each padded by at most 15 null rows.
const SMALL: usize = 16;
/// The most rows left that go in [`SMALL`] chunks (at most four of them); more take a
/// [`LARGE`] one.
const SMALL_UP_TO: usize = 4 * SMALL;

/// A chunk of rows of one shape, bound in order and padded with null rows to its size.
pub(super) struct Values {
    columns: Vec<&'static str>,
    args: SqliteArguments,
    rows: usize,
    size: usize,
}

impl Values {
    /// The rows' columns, the row struct's fields in order: `id, title, ...`.
    pub(super) fn columns(&self) -> String {
        self.columns.join(", ")
    }

    /// The common table `b` the rows make, each numbered `pos` from 0 in order:
    /// `b(pos, id, title, ...) as (values (?, ?, ?, ...), ...)`.
    pub(super) fn table(&self) -> String {
        let row = format!("({})", vec!["?"; self.columns.len() + 1].join(", "));
        format!(
            "b(pos, {}) as (values {})",
            self.columns(),
            vec![row.as_str(); self.size].join(", ")
        )
    }

    /// The chunk's real rows, in order: `select ... from b` (after the common table),
    /// skipping the null rows that pad it.
    pub(super) fn select_in_order(&self) -> String {
        format!(
            "select {} from b where b.pos is not null order by b.pos",
            self.columns()
        )
    }
}

/// `rows` cut into chunks (1,000 rows: three of 256 and one of 256 padded with 24 null rows;
/// 40 rows: three of 16, the last padded with 8).
pub(super) fn chunks<T: Serialize>(rows: &[T]) -> Result<Vec<Values>, StoreError> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let size = if rest.len() > SMALL_UP_TO {
            LARGE
        } else {
            SMALL
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        let mut values = Values {
            columns: Vec::new(),
            args: SqliteArguments::default(),
            rows: 0,
            size,
        };
        let refused =
            |e: Unbindable| StoreError::Backend(format!("a batch row cannot be bound: {e}"));
        for row in chunk {
            FieldSink(&mut values.args)
                .add(values.rows as i64)
                .map_err(refused)?;
            row.serialize(RowSink(&mut values)).map_err(refused)?;
            values.rows += 1;
        }
        // The padding, bound as nulls.
        for _ in 0..(size - values.rows) * (values.columns.len() + 1) {
            FieldSink(&mut values.args)
                .add(Option::<i64>::None)
                .map_err(refused)?;
        }
        out.push(values);
        rest = tail;
    }
    Ok(out)
}

/// The statement `sql` writes for a chunk of two default rows of `T`: how a batch statement
/// is sent, for the plan tests.
pub(super) fn for_two_rows<T: Default + Serialize>(
    sql: fn(&Values) -> String,
) -> Result<String, StoreError> {
    let rows = chunks(&[T::default(), T::default()])?;
    Ok(rows.first().map(sql).unwrap_or_default())
}

/// Runs the statement `sql` writes for each chunk of `rows` (see [`Values`]); the rows it
/// wrote.
pub(super) async fn execute<T: Serialize>(
    conn: &mut SqliteConnection,
    rows: &[T],
    sql: impl Fn(&Values) -> String,
) -> Result<u64, StoreError> {
    let mut written = 0;
    for values in chunks(rows)? {
        written += sqlx::query_with(AssertSqlSafe(sql(&values)), values.args)
            .execute(&mut *conn)
            .await
            .map_err(backend)?
            .rows_affected();
    }
    Ok(written)
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

/// The shapes neither a row nor a column value takes, refused alike by both sinks.
macro_rules! refuse_other_shapes {
    () => {
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

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<(), Unbindable> {
            v.serialize(self)
        }
    };
}

/// A row is a struct; a bare value is not a row.
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

    refuse_other_shapes!();

    unbindable!(
        serialize_bool(bool) -> (): "bare value",
        serialize_i8(i8) -> (): "bare value",
        serialize_i16(i16) -> (): "bare value",
        serialize_i32(i32) -> (): "bare value",
        serialize_i64(i64) -> (): "bare value",
        serialize_u8(u8) -> (): "bare value",
        serialize_u16(u16) -> (): "bare value",
        serialize_u32(u32) -> (): "bare value",
        serialize_u64(u64) -> (): "bare value",
        serialize_str(&str) -> (): "bare value",
        serialize_none() -> (): "bare value",
        serialize_unit() -> (): "bare value"
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unbindable> {
        unbindable("bare value")
    }
}

/// A column value is a text, an integer, a boolean or a null.
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

    refuse_other_shapes!();

    unbindable!(serialize_struct(&'static str, usize) -> Self::SerializeStruct: "struct");

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
}

#[cfg(test)]
mod tests;
