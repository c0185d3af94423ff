//! What stored bytes are: checked against their declaration, and images decoded (a few at a
//! time, within memory limits) and shrunk.

use bytes::Bytes;

/// Why a stored object does not match its declaration (a 422 on `upload_id`/`attachment_id`),
/// or `None` when it does: the size as declared, and, when the bytes show a type (images, PDF,
/// archives…), that type. A declared image must show its type.
pub fn mismatch(
    declared_type: &str,
    declared_size: u64,
    stored_size: u64,
    head: &[u8],
) -> Option<String> {
    if stored_size != declared_size {
        return Some(format!(
            "the stored object is {stored_size} bytes, not the {declared_size} declared"
        ));
    }
    match sniff(head) {
        Some(seen) if seen != declared_type => Some(format!(
            "the stored object is {seen}, not the {declared_type} declared"
        )),
        None if declared_type.starts_with("image/") => {
            Some(format!("the stored object is not {declared_type}"))
        }
        _ => None,
    }
}

/// The largest image (either side, in pixels) decoded for a thumbnail or an avatar.
const MAX_DECODED_SIDE: u32 = 12_000;

/// The most memory one decode may take: an 8,000 × 8,000 picture with an alpha channel, a
/// 48-megapixel photo without one. A small file can claim far more (a decompression bomb):
/// the decoder refuses it from its header, before allocating.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Images decoded at once in one process. Decoding is CPU work, and each decode may take
/// [`MAX_DECODE_BYTES`]: without a bound, one user's burst of image messages (their thumbnails
/// are made off the send path, all at once) could take every core and gigabytes of memory.
const DECODES_AT_ONCE: usize = 2;

static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DECODES_AT_ONCE);

/// One of the process's [`DECODES_AT_ONCE`] turns at decoding an image. Take it before reading
/// the file, so files waiting for a turn are not held in memory meanwhile; [`shrink_image`]
/// keeps it until the decode is done.
pub struct DecodeSlot(#[allow(dead_code)] Option<tokio::sync::SemaphorePermit<'static>>);

impl DecodeSlot {
    /// Waits for a turn.
    pub async fn acquire() -> Self {
        // The semaphore is never closed, so a permit always comes.
        Self(DECODING.acquire().await.ok())
    }
}

/// A decoded image: its size, and a copy no larger than `max` on either side (never enlarged) as
/// PNG. Runs on a blocking thread (decoding is CPU work), holding `slot` until done; a
/// decompression bomb is refused by the decoder's limits, not allocated.
pub async fn shrink_image(
    slot: DecodeSlot,
    bytes: Bytes,
    max: u32,
) -> Result<(u32, u32, Bytes), String> {
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_DECODED_SIDE);
        limits.max_image_height = Some(MAX_DECODED_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| e.to_string())?;
        let (w, h) = (img.width(), img.height());
        // `thumbnail` scales to fit either way: a smaller image is kept at its size.
        let small = if w > max || h > max {
            img.thumbnail(max, max)
        } else {
            img
        };
        let mut out = std::io::Cursor::new(Vec::new());
        small
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        Ok((w, h, Bytes::from(out.into_inner())))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The content type the bytes show (their magic numbers), when they show one.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    infer::get(head).map(|t| t.mime_type())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A PNG that claims `width` × `height` RGBA pixels and holds none.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        // 8 bits per channel, RGBA, deflate, adaptive filtering, not interlaced.
        header.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &header);
        // An empty zlib stream: no pixel data at all.
        chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[tokio::test]
    async fn an_image_claiming_more_memory_than_a_decode_may_take_is_refused_unread() {
        // 9,000 × 9,000 RGBA is 324 MB: within the side limit, past the memory one.
        let refused = shrink_image(
            DecodeSlot::acquire().await,
            Bytes::from(png_claiming(9_000, 9_000)),
            64,
        )
        .await;
        let e = refused.err().unwrap_or_default();
        assert!(e.to_lowercase().contains("limit"), "{e}");
        // Too wide, however little memory it claims.
        let e = shrink_image(
            DecodeSlot::acquire().await,
            Bytes::from(png_claiming(13_000, 1)),
            64,
        )
        .await
        .err()
        .unwrap_or_default();
        assert!(e.to_lowercase().contains("limit"), "{e}");
    }

    /// A real `width` × `height` RGB image, encoded as PNG.
    fn png(width: u32, height: u32) -> Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::new_rgb8(width, height)
            .write_to(&mut out, image::ImageFormat::Png)
            .map(|()| Bytes::from(out.into_inner()))
            .unwrap_or_default()
    }

    async fn shrunk_size(bytes: Bytes, max: u32) -> (u32, u32) {
        let (_, _, small) = shrink_image(DecodeSlot::acquire().await, bytes, max)
            .await
            .unwrap_or_default();
        image::load_from_memory(&small).map_or((0, 0), |i| (i.width(), i.height()))
    }

    #[tokio::test]
    async fn images_are_shrunk_to_fit_and_never_enlarged() {
        assert_eq!(shrunk_size(png(640, 320), 64).await, (64, 32));
        assert_eq!(shrunk_size(png(16, 12), 64).await, (16, 12));
    }

    #[tokio::test]
    async fn images_are_decoded_a_few_at_a_time() {
        let held: Vec<DecodeSlot> =
            futures_util::future::join_all((0..DECODES_AT_ONCE).map(|_| DecodeSlot::acquire()))
                .await;
        let waiting = tokio::spawn(DecodeSlot::acquire());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a turn past the bound waits");
        drop(held);
        let turn = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        assert!(turn.is_ok(), "and gets one once a decode is done");
    }

    #[test]
    fn a_stored_object_must_match_its_declaration() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(mismatch("image/png", 16, 16, png), None);
        assert!(mismatch("image/png", 15, 16, png)
            .unwrap()
            .contains("16 bytes"));
        assert!(mismatch("image/jpeg", 16, 16, png)
            .unwrap()
            .contains("image/png"));
        assert!(
            mismatch("image/png", 5, 5, b"hello").is_some(),
            "an image must look like one"
        );
        assert_eq!(mismatch("text/plain", 5, 5, b"hello"), None);
        assert!(
            mismatch("text/plain", 16, 16, png).is_some(),
            "no PNG passed off as text"
        );
    }

    #[test]
    fn sniffing_sees_images_and_pdfs() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(sniff(b"hello world"), None);
    }
}
