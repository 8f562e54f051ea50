// assembly: Grpc.Net.Common references: Grpc.Core.Api
// TESTS ONLY. grpc-dotnet v2.59.0 src/Grpc.Net.Common (netstandard2.1): compression providers.
namespace Grpc.Net.Compression
{
    public interface ICompressionProvider
    {
        string EncodingName { get; }
        System.IO.Stream CreateCompressionStream(System.IO.Stream stream, System.IO.Compression.CompressionLevel? compressionLevel);
        System.IO.Stream CreateDecompressionStream(System.IO.Stream stream);
    }
}
